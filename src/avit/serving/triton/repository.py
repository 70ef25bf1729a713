"""avit artifact → Triton Inference Server model repository (``avit triton-repo``).

Layout written::

    <repo>/README.md                      how to start the server, query it, run perf_analyzer
    <repo>/<name>/config.pbtxt            see the backends below
    <repo>/<name>/1/model.onnx | model.plan | model.py + model.onnx (or model.xml + model.bin)
    <repo>/<name>_<setting>/…             optional: thresholds fixed at one setting

**Backends.**

* ``python`` (``--backend python``; the only one for OpenVINO ``.xml`` files): Triton's python backend
  runs ``model.py`` (:mod:`avit.serving.triton.python_model`), i.e. avit's own runtime
  (:class:`~avit.runtime.AdaptiveSession`) in the server's Python. ``pause_thresholds`` is an input **per
  image** (``[B, P]``, optional: the model's defaults), so Triton's **dynamic batcher groups requests
  whatever their thresholds**, and each image runs at its own. The server's Python needs avit and the
  runtime (``pip install avit``); ``avit triton-serve`` runs such a repository with the
  ``tritonserver`` of PyPI ``nvidia-pytriton``.
* ``onnxruntime`` (default for ``.onnx``) and ``tensorrt`` (``.engine``): Triton's own backends run the
  file. The graph's ``pause_thresholds`` is one ``[P]`` tensor shared by the whole call, without a batch
  dimension; Triton's batching prepends a batch dimension to every input and its dynamic batcher
  compares shapes, not values, so it can neither feed a ``[P]`` input nor keep requests with different
  thresholds apart. Hence:

  * ``<name>`` — **per-request thresholds**: ``max_batch_size: 0`` (no batching across requests; a
    client sends its own batch ``images [n, C, H, W]``) and ``pause_thresholds [P]`` per request. For
    ONNX it is ``optional: true``: the repository's copy carries the default thresholds as an
    *overridable initializer* (a graph input with a default value; the onnxruntime backend allows
    optional inputs only in non-batching models, which this is). TensorRT engines have no default
    values: the input is required there. Parallelism comes from ``instance_group``.
  * ``<name>_<setting>`` (``--preset`` / ``--fixed``, ONNX only) — **fixed thresholds, dynamic
    batching**: ``pause_thresholds`` replaced by a constant, ``images [C, H, W]`` per request.

**Queue policy.** Every dynamically batched model gets Triton's ``default_queue_policy``: at most
``max_queue_size`` waiting requests (beyond: rejected at once, HTTP 503 / gRPC UNAVAILABLE) and
``queue_timeout_s`` in the queue (then rejected); see :mod:`avit.serving.triton.config`.

TensorRT engines need the avit plugin library *in the server process*: Triton's tensorrt backend
``dlopen``-s what ``--backend-config=tensorrt,plugins="/path/libavit_plugins.so"`` names (or use
``LD_PRELOAD``). That must be ``libavit_plugins.so`` (its plugins register themselves when loaded);
``libavit_plugins_dynamic.so`` only exports ``getCreators``, which Triton never calls.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from avit._io import atomic_write, json_float
from avit.errors import ArtifactError, BackendUnavailableError, InputError
from avit.metadata import PREFIX, ModelInfo
from avit.serving.triton.config import BACKENDS, KINDS, TritonModelSpec, config_pbtxt

#: ``AdaptiveSession`` backends a python-backend model may use.
RUNTIMES = ("onnxruntime", "openvino")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
#: The python-backend model file copied into every python model's version folder.
PYTHON_MODEL = Path(__file__).with_name("python_model.py")


def _json(values: Sequence[float]) -> str:
    return json.dumps([json_float(v) for v in values])


# ---------------------------------------------------------------------------------------------- ONNX copies
def onnx_with_thresholds(model, thresholds: Sequence[float], *, keep_input: bool):
    """A copy of an avit ONNX ``ModelProto`` whose ``pause_thresholds`` has the value ``thresholds``.

    Args:
        keep_input: True: stays a graph input with that *default* (an overridable initializer; ONNX
            Runtime uses it when the input is not fed). False: becomes a constant (the input is gone).

    Also records the setting in the metadata: ``avit.default_thresholds`` = ``thresholds`` and
    ``avit.thresholds_input`` = ``"optional"`` / ``"fixed"``.

    Raises:
        ArtifactError: the model has no ``pause_thresholds`` input, or it already has a value.
    """
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    if "pause_thresholds" not in [i.name for i in graph.input]:
        raise ArtifactError("the model has no pause_thresholds input")
    if any(init.name == "pause_thresholds" for init in graph.initializer):
        raise ArtifactError("the model's pause_thresholds already has a value")
    if copy.ir_version < 4:  # inputs with initializers as defaults need IR >= 4
        copy.ir_version = 4
    graph.initializer.append(numpy_helper.from_array(np.asarray(thresholds, dtype=np.float32), name="pause_thresholds"))
    if not keep_input:
        kept = [i for i in graph.input if i.name != "pause_thresholds"]
        del graph.input[:]
        graph.input.extend(kept)
    props = {p.key: p for p in copy.metadata_props}
    updates = {PREFIX + "default_thresholds": _json(thresholds), PREFIX + "thresholds_input": "optional" if keep_input else "fixed"}
    for key, value in updates.items():
        if key in props:
            props[key].value = value
        else:
            entry = copy.metadata_props.add()
            entry.key, entry.value = key, value
    return copy


# ---------------------------------------------------------------------------------------------- artifacts
@dataclasses.dataclass
class _Artifact:
    path: Path
    kind: str  # "onnx" | "engine" | "openvino"
    info: ModelInfo
    proto: object = None  # onnx.ModelProto (onnx)
    sidecar: object = None  # EngineSidecar (engine)

    def files(self) -> list[tuple[Path, str]]:
        """(source, name in the version folder) of the python backend's copy."""
        if self.kind == "openvino":  # avit's IR naming: model.openvino.xml + model.openvino.bin
            return [(self.path, "model.openvino.xml"), (self.path.with_suffix(".bin"), "model.openvino.bin")]
        return [(self.path, "model.onnx")]


def _read_artifact(model: Path) -> _Artifact:
    """Open ``model`` far enough to know its avit metadata. Raises ArtifactError / BackendUnavailableError."""
    if not model.is_file():
        raise ArtifactError(f"model not found: {model}")
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        from avit.metadata.onnx_file import read_onnx

        proto, info, _ = read_onnx(model)
        return _Artifact(model, "onnx", info, proto=proto)
    if suffix in (".engine", ".plan", ".trt"):
        from avit.runtime.tensorrt import read_sidecar

        sidecar = read_sidecar(model)
        return _Artifact(model, "engine", sidecar.info, sidecar=sidecar)
    if suffix == ".xml":
        if not model.with_suffix(".bin").is_file():
            raise ArtifactError(f"{model.name} needs its weights {model.with_suffix('.bin').name} beside it")
        return _Artifact(model, "openvino", _openvino_info(model))
    raise ArtifactError(f"{model} is not an avit artifact (expected .onnx, .engine or an OpenVINO .xml)")


def _openvino_info(model: Path) -> ModelInfo:
    """The avit metadata of an OpenVINO IR (``rt_info["framework"]``, read without compiling).

    Raises:
        BackendUnavailableError: no OpenVINO, or an avit without the OpenVINO runtime backend.
        ArtifactError: not an IR OpenVINO reads, or no avit metadata in it.
    """
    try:
        from avit.runtime.openvino_backend import import_openvino, ir_metadata
    except ImportError:
        raise BackendUnavailableError(f"{model.name}: this avit's runtime has no OpenVINO backend") from None
    ov = import_openvino()
    try:
        ir = ov.Core().read_model(str(model))
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line reports
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{model} is not a loadable OpenVINO IR: {first}") from exc
    return ModelInfo.from_props(ir_metadata(ir), where=str(model))


# ---------------------------------------------------------------------------------------------- repository
@dataclasses.dataclass
class TritonRepository:
    """What :func:`write_triton_repository` wrote.

    Attributes:
        root: The repository folder.
        models: One spec per model folder.
        readme: ``<root>/README.md``.
        plugin_library: The plugin library the README points Triton to (engines), else None.
    """

    root: Path
    models: list[TritonModelSpec]
    readme: Path
    plugin_library: Path | None = None


def _check_name(name: str) -> str:
    if not name or not set(name) <= _NAME_OK or name.startswith("."):
        raise InputError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    return name


def _presets(model: Path, info: ModelInfo, names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    from avit.metadata.calibration import calibration_path, load_calibration

    calib_file = calibration_path(model)
    if not calib_file.is_file():
        raise ArtifactError(f"--preset needs {calib_file.name} beside the model (run: avit calibrate {model})")
    calib = load_calibration(calib_file)
    calib.check_model(info, model)
    settings = {}
    for preset in names:
        if preset not in calib.presets:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(sorted(calib.presets))}")
        settings[preset] = tuple(calib.presets[preset].thresholds)
    return settings


def _slo_calibration(model: Path, info: ModelInfo, backend: str, slo_ms: float):
    """The calibration an SLO model is served with (checked: model, backend, reachable SLO).

    Raises:
        InputError: not the python backend, a static model, or ``slo_ms`` not positive / below the fastest
            setting. ArtifactError: no calibration beside the model, or one for another model file.
    """
    from avit.metadata.calibration import calibration_path, load_calibration
    from avit.runtime.slo import _positive_ms, slo_ladder

    _positive_ms(slo_ms, "slo_ms")
    if backend != "python":
        raise InputError("--slo-ms needs --backend python (the avit runtime inside Triton chooses the thresholds per call)")
    if info.num_pause_points == 0:
        raise InputError("a static model has no pause thresholds to turn under an SLO")
    path = calibration_path(model)
    if not path.is_file():
        raise ArtifactError(f"--slo-ms needs {path.name} beside the model (run: avit calibrate {model} --target-latency-ms ...)")
    calib = load_calibration(path)
    calib.check_model(info, model)
    slo_ladder(calib, info.default_thresholds, slo_ms)  # the same check the served model makes at load
    return calib


def write_triton_repository(
    model: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    backend: str | None = None,
    runtime: str | None = None,
    max_batch: int = 8,
    instances: int = 1,
    device: str = "auto",
    presets: Sequence[str] = (),
    fixed: Mapping[str, Sequence[float]] | None = None,
    max_queue_delay_us: int = 500,
    max_queue_size: int = 64,
    queue_timeout_s: float = 30.0,
    intra_op_threads: int | None = None,
    plugin_library: str | Path | None = None,
    overwrite: bool = False,
    slo_ms: float | None = None,
) -> TritonRepository:
    """Write a Triton model repository serving ``model`` (``.onnx``, ``.engine`` or OpenVINO ``.xml``).

    Args:
        model: The avit artifact. An engine needs its sidecar ``<engine>.json``; an ``.xml`` its ``.bin``.
        output: Repository folder (created; must not hold these models yet unless ``overwrite``).
        name: Model name (default: the file's stem).
        backend: ``"python"`` (avit's runtime inside Triton's python backend: dynamic batching with
            per-image thresholds), ``"onnxruntime"`` or ``"tensorrt"``. None: ``python`` for ``.onnx`` (it
            runs on the server ``avit triton-serve`` starts) and OpenVINO ``.xml``, ``tensorrt`` for engines.
        runtime: python backend: the :class:`~avit.runtime.AdaptiveSession` backend ``model.py`` uses,
            ``"onnxruntime"`` or ``"openvino"`` (None: ``openvino`` for ``.xml``, else ``onnxruntime``).
        max_batch: ``max_batch_size`` of batching models; for per-request models the largest client
            batch the README mentions (engines: the profile's max batch is used).
        instances: Model instances (``instance_group.count``; python: one stub process each).
        device: ``"auto"`` | ``"cpu"`` | ``"gpu"`` (engines: gpu; python: auto = cpu, gpu = the CUDA
            execution provider).
        presets: Calibration presets (``<model>.calib.json``) to add as fixed-threshold models ``<name>_<preset>``.
        fixed: More fixed-threshold models: ``{"fast": [0.6, 0.6]}`` → ``<name>_fast``.
        max_queue_delay_us: Dynamic batcher delay of the batching models, microseconds.
        max_queue_size: Triton queue policy: most waiting requests per batching model (0: unbounded).
        queue_timeout_s: Triton queue policy: longest wait in the queue, seconds (0: no limit).
        intra_op_threads: Threads inside one operator, per instance.
        plugin_library: Engines: the plugin library the README's command loads (default: the
            sidecar's, $AVIT_PLUGIN_LIBRARY, the build folders; None is allowed and noted).
        overwrite: Replace existing model folders of the same names.
        slo_ms: python backend: the per-request-threshold model serves under this latency objective, ms
            (:mod:`avit.runtime.slo`; the model's calibration ``<model>.calib.json`` is copied beside it, the
            queue policy rejects requests that waited longer than the SLO). None: no SLO.

    Raises:
        ArtifactError: not an avit artifact, engine without sidecar, no calibration for ``presets``.
        BackendUnavailableError: an OpenVINO file and no OpenVINO runtime backend.
        InputError: bad names or numbers, a backend the file cannot use, fixed thresholds for an engine
            or a static model, existing folders without ``overwrite``.
    """
    model = Path(model)
    _check_options(max_batch, instances, max_queue_delay_us, max_queue_size, queue_timeout_s, device, backend)
    if not model.is_file():
        raise ArtifactError(f"model not found: {model}")
    artifact = _read_artifact(model)
    backend = _backend_for(artifact, backend)
    if name is None:  # m.onnx → m, m.int8.onnx → m_int8, m.openvino.xml → m
        name = model.name.split(".")[0] if artifact.kind == "openvino" else model.stem.replace(".", "_")
    name = _check_name(name)
    engine = artifact.kind == "engine"
    info = artifact.info
    if engine:
        if device == "cpu":
            raise InputError("TensorRT engines run on a GPU: use --instance-kind gpu (or auto)")
        max_batch = artifact.sidecar.max_batch
    if runtime is not None and backend != "python":
        raise InputError(f"runtime {runtime!r} applies to the python backend only (--backend python)")
    calibration = _slo_calibration(model, info, backend, slo_ms) if slo_ms is not None else None
    if calibration is not None:
        queue_timeout_s = slo_ms / 1e3  # Triton's queue policy: a request that waited the whole SLO is rejected
    settings = _fixed_settings(model, info, presets, fixed, engine)
    base = _base_spec(artifact, backend, runtime, device, instances, max_queue_delay_us, max_queue_size, queue_timeout_s,
                      intra_op_threads)
    specs = _model_specs(model, artifact, name, base, max_batch, settings, slo_ms if calibration is not None else None)

    root = Path(output)
    names = [spec.name for spec, _ in specs]
    if len(set(names)) != len(names):
        raise InputError(f"model names collide: {names}")
    existing = [n for n in names if (root / n).exists()]
    if existing and not overwrite:
        raise InputError(f"{root} already holds {', '.join(existing)} (use --overwrite to replace)")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder")
    library = _plugin_library(artifact, plugin_library) if engine else None
    for spec, payload in specs:
        _write_model(root / spec.name, spec, payload, artifact, model, calibration)
    models = [spec for spec, _ in specs]
    readme = atomic_write(
        root / "README.md",
        lambda tmp: Path(tmp).write_text(
            repository_readme(root, models, info, engine=engine, sidecar=artifact.sidecar, plugin_library=library)
        ),
    )
    return TritonRepository(root, models, readme, library)


def _check_options(max_batch, instances, max_queue_delay_us, max_queue_size, queue_timeout_s, device, backend) -> None:
    """Raise :class:`InputError` (one line) for out-of-range numbers or unknown names."""
    if max_batch < 1 or instances < 1 or max_queue_delay_us < 0 or max_queue_size < 0:
        raise InputError("max_batch and instances must be >= 1, max_queue_delay_us and max_queue_size >= 0")
    if not (queue_timeout_s >= 0) or math.isinf(queue_timeout_s):
        raise InputError(f"queue_timeout_s must be a number >= 0, got {queue_timeout_s}")
    if device not in KINDS:
        raise InputError(f"device (--instance-kind) must be one of {', '.join(KINDS)}, got {device!r}")
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _backend_for(artifact: _Artifact, backend: str | None) -> str:
    """The Triton backend of ``artifact`` (the default for its kind when None). Raises InputError if it cannot serve it."""
    # python for ONNX: it runs on the tritonserver that `avit triton-serve` starts (nvidia-pytriton bundles only
    # the python backend), batches requests with different thresholds and can serve under an SLO
    default = {"onnx": "python", "engine": "tensorrt", "openvino": "python"}[artifact.kind]
    backend = backend or default
    allowed = {"onnx": ("onnxruntime", "python"), "engine": ("tensorrt",), "openvino": ("python",)}[artifact.kind]
    if backend not in allowed:
        raise InputError(f"a{'n' if artifact.kind[0] in 'aeiou' else ''} {artifact.kind} model is served by backend {' or '.join(allowed)}, not {backend}")
    return backend


def _fixed_settings(model: Path, info: ModelInfo, presets, fixed, engine: bool) -> dict[str, tuple[float, ...]]:
    """Name → thresholds of the fixed-threshold models (calibration presets, then ``fixed``), validated."""
    p = info.num_pause_points
    settings: dict[str, tuple[float, ...]] = {}
    if presets:
        settings.update(_presets(model, info, presets))
    for key, values in (fixed or {}).items():
        settings[key] = tuple(float(v) for v in values)
    if settings and engine:
        raise InputError(
            "fixed thresholds need an ONNX model: an engine's pause_thresholds is an engine input "
            "(serve the engine per request, or add fixed models from the ONNX it was built from)"
        )
    if settings and p == 0:
        raise InputError("a static model has no pause thresholds to fix")
    for key, values in settings.items():
        _check_name(key)
        if len(values) != p or any(math.isnan(v) or v < 0 for v in values) or (
            info.policy == "keep_ratio" and any(v > 1 for v in values)
        ):
            raise InputError(f"fixed thresholds {key!r} must be {p} values >= 0 (keep ratios <= 1), got {list(values)}")
    return settings


def _base_spec(artifact: _Artifact, backend: str, runtime, device, instances, max_queue_delay_us, max_queue_size,
               queue_timeout_s, intra_op_threads) -> dict:
    """The :class:`TritonModelSpec` fields every model of the repository shares."""
    info = artifact.info
    c = int(info.config.get("in_chans", 3))
    h, w = (int(v) for v in info.input_size)
    if backend == "python":
        kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    else:
        kind = "KIND_GPU" if artifact.kind == "engine" else KINDS[device]
    base = dict(
        backend=backend,
        images=(c, h, w),
        num_classes=int(info.config["num_classes"]),
        num_pause_points=info.num_pause_points,
        instances=int(instances),
        kind=kind,
        max_queue_delay_us=int(max_queue_delay_us),
        max_queue_size=int(max_queue_size),
        queue_timeout_us=int(round(queue_timeout_s * 1e6)),
        intra_op_threads=intra_op_threads,
    )
    if backend == "python":
        runtime = runtime or ("openvino" if artifact.kind == "openvino" else "onnxruntime")
        if runtime not in RUNTIMES or (artifact.kind == "openvino" and runtime != "openvino"):
            raise InputError(f"runtime must be {'openvino for an OpenVINO IR' if artifact.kind == 'openvino' else 'one of ' + ', '.join(RUNTIMES)}, got {runtime!r}")
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device == "gpu" and runtime == "onnxruntime" else ()
        base.update(model_filename=artifact.files()[0][1], runtime=runtime, providers=providers)
    return base


def _model_specs(model: Path, artifact: _Artifact, name: str, base: dict, max_batch: int,
                 settings: Mapping[str, tuple[float, ...]], slo_ms: float | None) -> list[tuple[TritonModelSpec, object]]:
    """(spec, ONNX payload or None) of each model: the per-request (or per-image) one, then the fixed ones."""
    info = artifact.info
    p = info.num_pause_points
    engine = artifact.kind == "engine"
    python = base["backend"] == "python"
    about = f"avit {info.variant} model from {model.name}: pause points {list(info.pause_points)}, policy {info.policy}"
    specs: list[tuple[TritonModelSpec, object]] = []
    if p == 0:
        specs.append((TritonModelSpec(name, thresholds_input="none", max_batch=max_batch, comment=(about,), **base), artifact.proto))
    elif python:
        comment = (
            about,
            f"{'python backend: avit.runtime.AdaptiveSession (' + base['runtime'] + ')'}; pause_thresholds [B, {p}]: one row "
            f"per image (optional: default {_json(info.default_thresholds)}), so the dynamic batcher groups any requests",
        )
        if slo_ms is not None:
            comment = (*comment, f"under an SLO of {slo_ms:g} ms: images sent without pause_thresholds run at the setting "
                       "avit.runtime.slo picks per execute call (output pause_thresholds_used)")
        specs.append((TritonModelSpec(name, thresholds_input="optional", max_batch=max_batch, comment=comment,
                                      **{**base, "slo_ms": slo_ms}), None))
    else:
        mode = "request" if engine else "optional"
        comment = (
            about,
            f"pause_thresholds [{p}] per request ({'required' if engine else 'optional: default ' + _json(info.default_thresholds)}); "
            "max_batch_size 0: Triton does not batch requests (the thresholds are shared by a batch), clients send [n, C, H, W]",
        )
        payload = artifact.proto if engine else onnx_with_thresholds(artifact.proto, info.default_thresholds, keep_input=True)
        specs.append((TritonModelSpec(name, thresholds_input=mode, max_batch=max_batch, comment=comment, **base), payload))
    for key, values in settings.items():
        comment = (about, f"pause_thresholds fixed at {_json(values)} ({key}); dynamic batching of any requests")
        spec = TritonModelSpec(
            _check_name(f"{name}_{key}"), thresholds_input="none", max_batch=max_batch, fixed_thresholds=values,
            comment=comment, **base,
        )
        specs.append((spec, None if python else onnx_with_thresholds(artifact.proto, values, keep_input=False)))
    return specs


def _plugin_library(artifact: _Artifact, plugin_library) -> Path | None:
    """An engine's plugin library for the README's command: the given one, else the sidecar's if it exists."""
    from avit.runtime import tensorrt as trt_support

    if artifact.sidecar.plugin_library is None:
        return None
    try:
        recorded = Path(artifact.sidecar.plugin_library)
        return trt_support.find_plugin_library(
            plugin_library if plugin_library is not None else (recorded if recorded.is_file() else None)
        )
    except ArtifactError:
        if plugin_library is not None:
            raise
        return None


def _write_model(folder: Path, spec: TritonModelSpec, payload, artifact: _Artifact, model: Path, calibration) -> None:
    """One model folder: ``config.pbtxt`` and ``1/`` with the model file (and, python, ``model.py`` and under an
    SLO the calibration), every file written atomically; an existing folder is replaced."""
    if folder.exists():
        shutil.rmtree(folder)
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    if spec.backend == "python":
        for source, target in artifact.files():
            atomic_write(version / target, lambda tmp, s=source: shutil.copyfile(s, tmp))
        atomic_write(version / "model.py", lambda tmp: shutil.copyfile(PYTHON_MODEL, tmp))
        if spec.slo_ms is not None:
            from avit.metadata.calibration import calibration_path

            target = calibration_path(version / artifact.files()[0][1])
            atomic_write(target, lambda tmp: shutil.copyfile(calibration.path, tmp))
    elif artifact.kind == "engine":
        atomic_write(version / spec.file_name, lambda tmp: shutil.copyfile(model, tmp))
    else:
        import onnx

        atomic_write(version / spec.file_name, lambda tmp, m=payload: onnx.save(m, tmp))
    atomic_write(folder / "config.pbtxt", lambda tmp, s=spec: Path(tmp).write_text(config_pbtxt(s)))


def repository_readme(root: Path, models: list[TritonModelSpec], info: ModelInfo, *, engine: bool, sidecar=None, plugin_library=None) -> str:
    """The repository's README: the models table, how to start the server, a client call, perf_analyzer."""
    lines = _readme_models(models)
    lines += _readme_server(root, models[0], engine, sidecar, plugin_library)
    lines += _readme_client(models[0])
    lines += _readme_perf(models)
    return "\n".join(lines)


def _readme_models(models: list[TritonModelSpec]) -> list[str]:
    """The title, one table row per model, and what the backend means for batching."""
    first = models[0]
    c, h, w = first.images
    p = first.num_pause_points
    lines = [
        f"# Triton model repository for `{first.name}` (written by `avit triton-repo`)",
        "",
        "| model | backend | thresholds | Triton batching | input per request |",
        "|---|---|---|---|---|",
    ]
    for spec in models:
        if spec.fixed_thresholds is not None:
            what = f"fixed {_json(spec.fixed_thresholds)}"
        elif spec.thresholds_input == "none":
            what = "none (static model)"
        elif spec.backend == "python":
            what = f"`pause_thresholds` [n, {p}], one row per image (optional: model defaults)"
            if spec.slo_ms is not None:
                what += f"; under an SLO of {spec.slo_ms:g} ms the model picks them (output `pause_thresholds_used`)"
        else:
            what = f"`pause_thresholds` [{p}] per request" + (" (optional: model defaults)" if spec.thresholds_input == "optional" else "")
        if spec.batching:
            batching = f"dynamic, max {spec.max_batch}"
            if spec.max_queue_size:
                batching += f"; at most {spec.max_queue_size} waiting"
            if spec.queue_timeout_us:
                batching += f"; waits at most {spec.queue_timeout_us / 1e6:g} s"
        else:
            batching = "none (`max_batch_size: 0`)"
        shape = f"images [n, {c}, {h}, {w}]"
        backend = spec.backend + (f" ({spec.runtime})" if spec.backend == "python" else "")
        lines.append(f"| `{spec.name}` | {backend} | {what} | {batching} | {shape} |")
    if first.backend == "python":
        lines += [
            "",
            "The python backend runs `model.py`, i.e. avit's `AdaptiveSession`, in the server's Python: every image",
            "runs at its own thresholds, so Triton's dynamic batcher may group any requests. A full queue answers",
            "HTTP 503 / gRPC UNAVAILABLE at once (`max_queue_size`).",
        ]
    else:
        lines += [
            "",
            "Why two kinds: `pause_thresholds` is one tensor per model call, shared by the batch, so Triton can",
            "only batch requests whose thresholds are the same. Per-request models do not batch across requests",
            "(send several images in one request instead); fixed-threshold models batch everything.",
        ]
    return lines


def _readme_server(root: Path, first: TritonModelSpec, engine: bool, sidecar, plugin_library) -> list[str]:
    """How to start a server on the repository (avit triton-serve, tritonserver, the engine's plugins)."""
    lines = ["", "## Start the server", "", "```bash"]
    if first.backend == "python":
        return lines + [
            "# locally, with the tritonserver of PyPI nvidia-pytriton (pip install nvidia-pytriton avit):",
            f"avit triton-serve {root.resolve()} --http-port 8000 --grpc-port 8001",
            "# any Triton with the python backend, whose Python has avit and its runtime installed:",
            f"tritonserver --model-repository={root.resolve()}",
            "```",
        ]
    if not engine:
        return lines + [
            f"tritonserver --model-repository={root.resolve()}",
            "# in a container: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/repo:/models \\",
            "#   nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
            "```",
        ]
    lib = str(plugin_library.resolve()) if plugin_library is not None else "/path/to/libavit_plugins.so"
    if plugin_library is not None and "_dynamic" in Path(plugin_library).name:
        lib = str(Path(plugin_library).resolve()).replace("libavit_plugins_dynamic", "libavit_plugins")
    trt_version = sidecar.tensorrt_version if sidecar is not None else "?"
    lines += [
        f"# the engine loads only in TensorRT {trt_version}: use the Triton release built on that TensorRT",
        f"tritonserver --model-repository={root.resolve()} \\",
        f'  --backend-config=tensorrt,plugins="{lib}"',
        "# or: LD_PRELOAD=" + lib + " tritonserver --model-repository=…",
        "```",
        "",
        "The plugin library must be `libavit_plugins.so` (static registration: Triton `dlopen`s it);",
        "`libavit_plugins_dynamic.so` only exports `getCreators`, which Triton never calls.",
    ]
    if sidecar is not None:
        lines += [f"The engine's optimization profile allows batches of {sidecar.min_batch} to {sidecar.max_batch} images per request."]
    return lines


def _readme_client(first: TritonModelSpec) -> list[str]:
    """A tritonclient call for the first model."""
    c, h, w = first.images
    p = first.num_pause_points
    thresholds = ", ".join("0.3" for _ in range(p))
    lines = [
        "",
        "## Query it (Python, `pip install tritonclient[http]`)",
        "",
        "```python",
        "import numpy as np, tritonclient.http as http",
        "from avit.runtime import AdaptiveSession            # or preprocess yourself: resize, /255, (x - mean) / std",
        "client = http.InferenceServerClient('localhost:8000')",
        f"x = np.random.rand(2, {c}, {h}, {w}).astype(np.float32)   # preprocessed images",
    ]
    if first.backend == "python" and p:
        rows = ", ".join(f"[{thresholds}]" for _ in range(2))
        lines += [
            "inp = http.InferInput('images', list(x.shape), 'FP32'); inp.set_data_from_numpy(x)",
            f"t = http.InferInput('pause_thresholds', [2, {p}], 'FP32'); t.set_data_from_numpy(np.array([{rows}], np.float32))",
            f"out = client.infer('{first.name}', [inp, t])        # one thresholds row per image; omit t for the defaults",
        ]
    elif first.batching:
        lines += [
            f"inp = http.InferInput('images', [1, {c}, {h}, {w}], 'FP32'); inp.set_data_from_numpy(x[:1])",
            f"out = client.infer('{first.name}', [inp])",
        ]
    else:
        lines += [
            "inp = http.InferInput('images', list(x.shape), 'FP32'); inp.set_data_from_numpy(x)",
            f"t = http.InferInput('pause_thresholds', [{p}], 'FP32'); t.set_data_from_numpy(np.array([{thresholds}], np.float32))",
            f"out = client.infer('{first.name}', [inp, t])        # per-request thresholds"
            + ("; omit t for the model's defaults" if first.thresholds_input == "optional" else ""),
        ]
    return lines + ["out.as_numpy('logits').shape, out.as_numpy('tokens_kept')", "```"]


def _readme_perf(models: list[TritonModelSpec]) -> list[str]:
    """perf_analyzer lines, one per model."""
    c, h, w = models[0].images
    p = models[0].num_pause_points
    lines = ["", "## Measure it (perf_analyzer, from the Triton SDK container)", "", "```bash"]
    for spec in models:
        if spec.backend == "python" and spec.thresholds_input != "none":
            lines.append(f"perf_analyzer -m {spec.name} -b 1 --concurrency-range 1:8 --shape images:{c},{h},{w} --shape pause_thresholds:{p}")
        elif spec.batching:
            lines.append(f"perf_analyzer -m {spec.name} -b 4 --concurrency-range 1:8 --shape images:{c},{h},{w}")
        else:
            shape = f"--shape images:4,{c},{h},{w} --shape pause_thresholds:{p}"
            lines.append(f"perf_analyzer -m {spec.name} {shape} --concurrency-range 1:4   # random thresholds: use --input-data for fixed ones")
    return lines + ["```", ""]
