"""Where the avit TensorRT plugin library is and how it is loaded (once per process, by the right loader)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from avit.errors import ArtifactError

#: Environment variable naming the plugin library (used when no path is given explicitly).
PLUGIN_LIBRARY_ENV = "AVIT_PLUGIN_LIBRARY"
#: Plugin namespace and version of every avit plugin (``avit.ops._registry`` has the same values; a test
#: checks they agree, without importing torch here).
PLUGIN_NAMESPACE = "avit"
PLUGIN_VERSION = "1"
#: Build folders searched for the plugin library, relative to a repository root, in this order.
PLUGIN_SEARCH_GLOBS = ("build/plugins/libavit_plugins*.so", "plugins/build*/libavit_plugins*.so")

BUILD_HINT = "build it with: cmake -S plugins -B build/plugins -DTensorRT_ROOT=<TensorRT dir> && cmake --build build/plugins (docs/plugins.md)"


def repository_roots() -> list[Path]:
    """Folders whose build trees may hold the plugin library: the current directory and, for a source
    checkout (editable install), the repository root."""
    roots = [Path.cwd()]
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "plugins" / "CMakeLists.txt").is_file() and checkout not in roots:
        roots.append(checkout)
    return roots


def plugin_loader(path: str | os.PathLike) -> str:
    """``"dynamic"`` (``IPluginRegistry.load_library``) for ``libavit_plugins_dynamic*.so``, else ``"static"`` (dlopen)."""
    return "dynamic" if "_dynamic" in Path(path).name else "static"


def find_plugin_library(explicit: str | os.PathLike | None = None, roots: Iterable[Path] | None = None) -> Path:
    """The avit TensorRT plugin library to load.

    Order: ``explicit`` (``--plugins``), then ``$AVIT_PLUGIN_LIBRARY``, then the build folders
    :data:`PLUGIN_SEARCH_GLOBS` under ``roots`` (default :func:`repository_roots`), where the dynamic
    library (``libavit_plugins_dynamic.so``, loaded by TensorRT's own ``load_library``) is preferred
    over the static-registration one.

    Raises:
        ArtifactError: the given/configured file does not exist, or nothing was found (the message
            says how to build it).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ArtifactError(f"plugin library not found: {path} ({BUILD_HINT})")
        return path
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ArtifactError(f"plugin library not found: {path} (from ${PLUGIN_LIBRARY_ENV}; {BUILD_HINT})")
        return path
    searched = []
    for root in roots if roots is not None else repository_roots():
        for pattern in PLUGIN_SEARCH_GLOBS:
            searched.append(str(Path(root) / pattern))
            found = sorted(Path(root).glob(pattern), key=lambda p: (plugin_loader(p) != "dynamic", str(p)))
            if found:
                return found[0]
    raise ArtifactError(
        f"plugin library not found (no --plugins, no ${PLUGIN_LIBRARY_ENV}, nothing in {', '.join(searched)}): {BUILD_HINT}"
    )


_loaded_libraries: dict[str, object] = {}
_load_lock = threading.Lock()


def load_plugin_library(trt, path: str | os.PathLike, required: Sequence[str] = ()) -> str:
    """Load the plugin library into this process (once) and check that ``required`` plugins are registered.

    Args:
        trt: The ``tensorrt`` module.
        path: The library; its loader follows :func:`plugin_loader`.
        required: Plugin names (= ONNX op types) that must then exist in namespace ``avit``, version ``1``.

    Returns:
        The loader used, ``"static"`` or ``"dynamic"``.

    Raises:
        ArtifactError: the library cannot be loaded, or a required plugin is not registered.
    """
    path = Path(path).resolve()
    loader = plugin_loader(path)
    with _load_lock:
        if str(path) not in _loaded_libraries:
            if loader == "dynamic":
                handle = trt.get_plugin_registry().load_library(str(path))
                if handle is None:
                    raise ArtifactError(
                        f"TensorRT could not load plugin library {path} (see TensorRT's log above; a library "
                        "with static registration must be given as libavit_plugins.so, see docs/plugins.md)"
                    )
            else:
                try:
                    handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                except OSError as exc:
                    raise ArtifactError(f"cannot load plugin library {path}: {exc}") from exc
            _loaded_libraries[str(path)] = handle
    registry = trt.get_plugin_registry()
    for name in required:
        if registry.get_creator(name, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            raise ArtifactError(
                f"plugin {name} not registered (namespace {PLUGIN_NAMESPACE!r}, version {PLUGIN_VERSION}) after loading "
                f"{path}: rebuild the plugin library against this TensorRT ({trt.__version__})"
            )
    return loader
