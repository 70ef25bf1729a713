"""Run a Triton model repository locally with the ``tritonserver`` bundled in PyPI ``nvidia-pytriton``.

``pip install nvidia-pytriton`` (0.7.0: Triton Inference Server 2.51) ships a real ``tritonserver``
binary, the **python backend** (``libtriton_python.so`` + ``triton_python_backend_utils.py``), one
``triton_python_backend_stub`` per Python version (3.8–3.13) and the shared libraries they need
(``site-packages/nvidia_pytriton.libs``). It has no onnxruntime or tensorrt backend, so it serves the
python-backend models of ``avit triton-repo --backend python`` only.

What :class:`TritonServer` does (measured recipe, issue 15):

1. a backend folder ``<dir>/python/`` with ``libtriton_python.so``, ``triton_python_backend_utils.py``
   and the stub of *this* interpreter's ``X.Y`` (``--backend-directory=<dir>``);
2. the environment: ``LD_LIBRARY_PATH`` = this interpreter's own ``sysconfig`` ``LIBDIR`` first (else
   the stub can load another ``libpython3.Y.so`` of the system, whose ``threading`` does not match this
   interpreter's standard library: ``'_thread.RLock' object has no attribute '_recursion_count'``),
   then ``nvidia_pytriton.libs``; the folder of ``sys.executable`` first on ``PATH`` (the stub finds
   this environment's ``site-packages`` through it); the folder holding the imported ``avit`` package
   first on ``PYTHONPATH`` (the stub's interpreter does not read ``PYTHONPATH`` itself; avit's
   ``model.py`` puts its entries first on ``sys.path``, so the stub imports the same avit);
3. ``tritonserver --model-repository=… --backend-directory=… --http-address=127.0.0.1 --http-port=…
   --grpc-address=127.0.0.1 --grpc-port=… --allow-metrics=false --allow-gpu-metrics=false
   --exit-on-error=true --strict-readiness=true``;
4. poll ``GET /v2/health/ready``; stop with SIGINT (Triton unloads the models and exits 0).

Loopback only: the addresses default to ``127.0.0.1``; other addresses are the caller's decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from avit.errors import ArtifactError, BackendUnavailableError, InputError


#: A Triton log line's prefix: ``E1129 17:14:24.213525 5579 server.cc:241] ``.
_LOG_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+ \d+ [\w.]+:\d+\] ")
#: Error lines a CPU-only machine always logs.
_HARMLESS = ("CudaDriverHelper", "pinned memory", "CUDA driver")


@dataclasses.dataclass(frozen=True)
class BundledTriton:
    """Where the pieces of nvidia-pytriton's server are.

    Attributes:
        server: The ``tritonserver`` executable.
        python_backend: Folder with ``libtriton_python.so`` and ``triton_python_backend_utils.py``.
        stub: ``triton_python_backend_stub`` built for this interpreter's Python ``X.Y``.
        libraries: ``site-packages/nvidia_pytriton.libs`` (``libtritonserver``, its dependencies).
        version: The nvidia-pytriton distribution version.
    """

    server: Path
    python_backend: Path
    stub: Path
    libraries: Path
    version: str


def find_bundled_triton() -> BundledTriton:
    """Locate nvidia-pytriton's ``tritonserver`` and python backend for this interpreter.

    Raises:
        BackendUnavailableError: nvidia-pytriton is not installed, or has no stub for this Python.
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("avit triton-serve needs the tritonserver of nvidia-pytriton: pip install nvidia-pytriton")
    root = Path(next(iter(spec.submodule_search_locations)))
    bundle = root / "tritonserver"
    xy = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = BundledTriton(
        server=bundle / "bin" / "tritonserver",
        python_backend=bundle / "backends" / "python",
        stub=bundle / "python_backend_stubs" / xy / "triton_python_backend_stub",
        libraries=root.parent / "nvidia_pytriton.libs",
        version=importlib.metadata.version("nvidia-pytriton"),
    )
    if not found.server.is_file() or not (found.python_backend / "libtriton_python.so").is_file():
        raise BackendUnavailableError(f"nvidia-pytriton {found.version} has no tritonserver with a python backend at {bundle}")
    if not found.stub.is_file():
        have = sorted(p.name for p in (bundle / "python_backend_stubs").iterdir()) if (bundle / "python_backend_stubs").is_dir() else []
        raise BackendUnavailableError(
            f"nvidia-pytriton {found.version} has no python backend stub for Python {xy} (it has {', '.join(have) or 'none'})"
        )
    return found


def prepare_backend_directory(folder: str | os.PathLike, bundle: BundledTriton | None = None) -> Path:
    """Write ``<folder>/python/`` (backend library, utilities, this Python's stub); returns ``folder``.

    Raises:
        BackendUnavailableError: from :func:`find_bundled_triton`.
    """
    bundle = bundle or find_bundled_triton()
    folder = Path(folder)
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (bundle.python_backend / "libtriton_python.so", bundle.python_backend / "triton_python_backend_utils.py", bundle.stub):
        shutil.copy2(source, python / source.name)
    return folder


def _prepend(value: str, existing: str | None) -> str:
    return value if not existing else f"{value}{os.pathsep}{existing}"


def server_environment(bundle: BundledTriton | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``tritonserver`` and its python-backend stubs need (see the module docstring)."""
    import avit

    bundle = bundle or find_bundled_triton()
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    libs = [str(bundle.libraries)]
    if libdir:
        libs.insert(0, str(libdir))
    env["LD_LIBRARY_PATH"] = _prepend(os.pathsep.join(libs), env.get("LD_LIBRARY_PATH"))
    env["PATH"] = _prepend(str(Path(sys.executable).parent), env.get("PATH"))
    env["PYTHONPATH"] = _prepend(str(Path(avit.__file__).resolve().parents[1]), env.get("PYTHONPATH"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


class TritonServer:
    """A ``tritonserver`` subprocess serving a model repository (context manager).

    Args:
        repository: The model repository folder (``avit triton-repo … --backend python``).
        http_port, grpc_port: TCP ports (0: a free one each).
        host: Address both endpoints listen on (default loopback ``127.0.0.1``).
        log: File for the server's output (default: a temporary file, removed by :meth:`stop`).
        backend_directory: Where to write the python backend (default: a temporary folder).
        extra_args: More ``tritonserver`` arguments (e.g. ``["--log-verbose=1"]``).

    Attributes:
        http_url: ``http://host:port``; ``http_address`` / ``grpc_address``: ``host:port`` for tritonclient.
        process: The :class:`subprocess.Popen` once started.

    Raises (from :meth:`start`):
        ArtifactError: no repository, or the server exited while loading (the log's error lines).
        BackendUnavailableError: nvidia-pytriton missing.
        InputError: a port is taken.
        TimeoutError: not ready within ``timeout_s``.
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        host: str = "127.0.0.1",
        log: str | os.PathLike | None = None,
        backend_directory: str | os.PathLike | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository)
        self.host = host
        self.http_port = int(http_port) or free_port(host)
        self.grpc_port = int(grpc_port) or free_port(host)
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port(host)
        self._own_tmp: tempfile.TemporaryDirectory | None = None
        self._log_path = Path(log) if log is not None else None
        self._backend_directory = Path(backend_directory) if backend_directory is not None else None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self._final_log = ""

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self) -> list[str]:
        """The ``tritonserver`` command line (after :meth:`start` prepared the backend folder)."""
        bundle = find_bundled_triton()
        return [
            str(bundle.server),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self._backend_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Start the server and wait until ``/v2/health/ready`` answers 200 (every model loaded)."""
        if self.process is not None:
            raise InputError("the server is already started")
        if not self.repository.is_dir():
            raise ArtifactError(f"model repository not found: {self.repository}")
        bundle = find_bundled_triton()
        for port in (self.http_port, self.grpc_port):
            _check_port(self.host, port)
        if self._backend_directory is None or self._log_path is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="avit-triton-")
        if self._backend_directory is None:
            self._backend_directory = Path(self._own_tmp.name) / "backends"
        if self._log_path is None:
            self._log_path = Path(self._own_tmp.name) / "tritonserver.log"
        prepare_backend_directory(self._backend_directory, bundle)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_environment(bundle),
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; stop() sends the server one SIGINT
            )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """Whether ``GET /v2/health/ready`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll readiness every 0.1 s. Raises :class:`ArtifactError` if the server exits, TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ArtifactError(f"tritonserver exited with {code} before it was ready: {self.failure()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver was not ready within {timeout_s:g} s: {self.failure()}")
            time.sleep(0.1)

    def log_text(self) -> str:
        """The server's output so far (after :meth:`stop`: also when it went to a temporary file)."""
        if self._log_path is None or not self._log_path.is_file():
            return self._final_log
        return self._log_path.read_text(errors="replace")

    def failure(self) -> str:
        """One line from the server log: why a model failed to load, else its first error, else its last line."""
        lines = [line.strip() for line in self.log_text().splitlines() if line.strip()]
        load = [line for line in lines if "failed to load" in line]
        errors = [line for line in lines if _LOG_LINE.match(line) and line[0] == "E" and not any(h in line for h in _HARMLESS)]
        chosen = (load or errors or lines[-1:] or ["no output"])[0]
        return _LOG_LINE.sub("", chosen).strip().strip('"').split("\\n")[0].strip()[:500]  # Triton escapes newlines

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (Triton unloads its models and exits), SIGKILL after ``timeout_s``; returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._own_tmp is not None:
            self._final_log = self.log_text()
            if self._log_path is not None and self._log_path.is_relative_to(self._own_tmp.name):
                self._log_path = None
            self._own_tmp.cleanup()
            self._own_tmp = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def running_triton(repository: str | os.PathLike, **options):
    """``with running_triton(repo) as server:`` — :class:`TritonServer` started, stopped on exit."""
    server = TritonServer(repository, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def repository_backends(repository: str | os.PathLike) -> dict[str, str]:
    """Model name → backend (``python``, ``onnxruntime``, ``tensorrt``, …) read from each ``config.pbtxt``.

    Raises:
        ArtifactError: no such folder, or no model in it.
    """
    root = Path(repository)
    if not root.is_dir():
        raise ArtifactError(f"model repository not found: {root}")
    found = {}
    for config in sorted(root.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        backend = re.search(r'^\s*backend:\s*"([^"]+)"', text, re.M)
        platform = re.search(r'^\s*platform:\s*"([^"]+)"', text, re.M)
        value = backend.group(1) if backend else (platform.group(1) if platform else "?")
        found[config.parent.name] = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}.get(value, value)
    if not found:
        raise ArtifactError(f"{root} holds no model (no <model>/config.pbtxt): write one with avit triton-repo")
    return found


def serve_repository(
    repository: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    log: str | os.PathLike | None = None,
    timeout_s: float = 300.0,
    announce=None,
) -> int:
    """Run ``repository`` with the bundled ``tritonserver`` until it exits or Ctrl-C; returns its exit code.

    ``announce`` receives one line once every model is ready. The server's log goes to ``log`` (default:
    a temporary file; its first error line is in the exception when loading fails).

    Raises:
        ArtifactError: no repository, a model whose backend the bundled server lacks (only ``python``),
            or a model that failed to load.
        BackendUnavailableError: nvidia-pytriton is not installed.
        InputError: a port is taken.
        TimeoutError: not ready within ``timeout_s``.
    """
    backends = repository_backends(repository)
    other = {name: b for name, b in backends.items() if b != "python"}
    if other:
        listed = ", ".join(f"{name} ({b})" for name, b in sorted(other.items()))
        raise ArtifactError(
            f"the tritonserver of nvidia-pytriton has only the python backend; {listed} need Triton's own "
            "release (write this repository with avit triton-repo --backend python to serve it here)"
        )
    server = TritonServer(repository, host=host, http_port=http_port, grpc_port=grpc_port, log=log)
    server.start(timeout_s)
    try:
        if announce is not None:
            announce(
                f"tritonserver (nvidia-pytriton {find_bundled_triton().version}) serving {', '.join(sorted(backends))} on HTTP {server.http_url} "
                f"and gRPC {server.grpc_address}; Ctrl-C stops it"
            )
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    return code if code is not None else 0
