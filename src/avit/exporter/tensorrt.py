"""ONNX → TensorRT engine (optional: needs TensorRT, an NVIDIA GPU and the avit plugin library).

:func:`build_engine` loads the plugin library, parses the avit ONNX model into a **strongly typed**
network (the ONNX types decide the precision: an fp16 engine comes from an fp16 ONNX,
``avit export --precision fp16``; TensorRT 11 has no other mode), adds one optimization profile for the
batch size (the image size is fixed by the model), builds with an optional timing cache and writes
``model.engine`` atomically with its sidecar ``model.engine.json`` (:mod:`avit.runtime.tensorrt`).

The pause thresholds stay an engine *input* (``pause_thresholds``, float32 ``[P]``, shape-static), so
every inference call chooses its own; nothing about them is baked in at build time.

How the ``avit`` nodes become plugins: :func:`prepare_onnx` removes the model-local functions of the
``avit`` ops (their standard-op lowering, which ONNX Runtime uses) before parsing, so every TensorRT
parser version (10.1 preferred a local function over a registered plugin) can only import the nodes as
the plugins named by their ``plugin_namespace`` / ``plugin_version`` attributes, and a missing plugin is
a parser error instead of a silent fallback; where the parser has ``ENABLE_PLUGIN_OVERRIDE`` it is set
too. ``use_plugins=False`` builds the stock engine instead (local functions kept, plugin attributes
removed), for comparing the two.

TensorRT is imported lazily; without it :func:`build_engine` raises
:class:`~avit.errors.BackendUnavailableError` with one line saying so. :func:`trtexec_command`,
:func:`prepare_onnx` and everything in :mod:`avit.runtime.tensorrt` work without TensorRT.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from avit._io import atomic_write, file_sha256
from avit.errors import ArtifactError, BackendUnavailableError, ExportError, InputError
from avit.metadata.onnx_file import read_onnx
from avit.metadata import ModelInfo
from avit.runtime.tensorrt import (
    EngineSidecar,
    find_plugin_library,
    import_tensorrt,
    load_plugin_library,
    plugin_loader,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "EngineReport",
    "build_engine",
    "import_tensorrt",
    "prepare_onnx",
    "profile_shapes",
    "trtexec_command",
]

AVIT_DOMAIN = "avit"
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")


@dataclasses.dataclass
class EngineReport:
    """Result of :func:`build_engine`.

    Attributes:
        engine_path: The engine written.
        sidecar_path: Its JSON sidecar.
        sidecar: The sidecar's content.
        trtexec: The equivalent trtexec command line.
        build_seconds: Time spent in ``build_serialized_network``.
        size_bytes: Engine size.
        plugin_layers: Plugin layers in the parsed network (one per ``avit`` node with plugins).
    """

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    trtexec: str
    build_seconds: float
    size_bytes: int
    plugin_layers: int


# ---------------------------------------------------------------------------------------------- pure parts
def read_model_info(onnx_path: str | os.PathLike) -> tuple[onnx.ModelProto, ModelInfo]:
    """Load an avit ONNX model and its metadata.

    Raises:
        ArtifactError: missing file, not ONNX, no avit metadata, or an ONNX Runtime-only artifact
            (optimized by :func:`~avit.exporter.optimize.optimize_onnx`, or int8-dynamic).
    """
    path = Path(onnx_path)
    proto, info, props = read_onnx(path)
    if "avit.optimization" in props:
        raise ArtifactError(f"{path} is optimized for ONNX Runtime (contrib ops TensorRT cannot parse); build engines from the portable export")
    if "int8 dynamic" in props.get("avit.quantization", ""):
        raise ArtifactError(f"{path} is int8-dynamic (MatMulInteger, ONNX Runtime only); for TensorRT quantize with --quantize int8 (static QDQ)")
    return proto, info


def profile_shapes(info: ModelInfo, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """The optimization profile of ``images``: ``{"images": {"min": [b, C, H, W], "opt": …, "max": …}}``.

    Raises:
        InputError: batches not ``1 <= min <= opt <= max``.
    """
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise InputError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    chw = [int(info.config["in_chans"]), *map(int, info.input_size)]
    return {"images": {"min": [min_batch, *chw], "opt": [opt_batch, *chw], "max": [max_batch, *chw]}}


def prepare_onnx(proto: onnx.ModelProto, use_plugins: bool = True) -> onnx.ModelProto:
    """The model as TensorRT's parser should see it (a copy; ``proto`` is unchanged).

    ``use_plugins=True``: drop the model-local functions of domain ``avit`` (the ``avit`` nodes stay and
    can then only become plugins). ``False``: keep the functions and remove the ``plugin_namespace`` /
    ``plugin_version`` attributes, so the parser inlines the standard-op lowering.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if use_plugins:
        keep = [f for f in out.functions if f.domain != AVIT_DOMAIN]
        del out.functions[:]
        out.functions.extend(keep)
    else:
        for node in out.graph.node:
            if node.domain == AVIT_DOMAIN:
                attrs = [a for a in node.attribute if a.name not in PLUGIN_ATTRIBUTES]
                del node.attribute[:]
                node.attribute.extend(attrs)
    return out


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profile: dict[str, dict[str, list[int]]],
    *,
    plugin_library: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_mb: int | None = None,
    tf32: bool = False,
    plugin_override: bool = False,
) -> str:
    """The trtexec command line that builds the same engine as :func:`build_engine` (pure function).

    Flags (TensorRT 10/11 trtexec): ``--onnx``, ``--saveEngine``, ``--stronglyTyped`` (needed in 10.x, a
    no-op in 11), ``--minShapes/--optShapes/--maxShapes`` per profiled input, ``--staticPlugins`` or
    ``--dynamicPlugins`` by library (see :func:`~avit.runtime.tensorrt.plugin_loader`),
    ``--enablePluginOverride`` where the parser has the flag, ``--noTF32`` unless TF32 is allowed,
    ``--memPoolSize=workspace:<N>M``, ``--timingCacheFile`` and ``--skipInference`` (build only).

    trtexec parses the ONNX file as it is, with the local functions that :func:`prepare_onnx` removes;
    the ``plugin_namespace`` attributes and ``--enablePluginOverride`` make newer parsers pick the plugins
    all the same (on 10.1-era parsers give trtexec the output of :func:`prepare_onnx` instead).
    """
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    parts = ["trtexec", f"--onnx={q(onnx_path)}", f"--saveEngine={q(engine_path)}", "--stronglyTyped"]
    for which, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        spec = ",".join(f"{name}:{_dims(shapes[which])}" for name, shapes in profile.items())
        parts.append(f"{flag}={q(spec)}")
    if plugin_library is not None:
        flag = "--dynamicPlugins" if plugin_loader(plugin_library) == "dynamic" else "--staticPlugins"
        parts.append(f"{flag}={q(plugin_library)}")
        if plugin_override:
            parts.append("--enablePluginOverride")
    if not tf32:
        parts.append("--noTF32")
    if workspace_mb is not None:
        parts.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if timing_cache is not None:
        parts.append(f"--timingCacheFile={q(timing_cache)}")
    parts.append("--skipInference")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- TensorRT
def make_logger(trt, log: Callable[[str], None], verbose: bool = False):
    """A ``trt.ILogger`` that keeps error messages (for one-line exceptions) and forwards warnings to ``log``."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):  # noqa: A003  (TensorRT's name)
            if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR):
                self.errors.append(str(msg).strip())
            elif severity == trt.Logger.WARNING or verbose:
                log(f"TensorRT: {str(msg).strip()}")

    return Logger()


def _first_error(logger, fallback: str) -> str:
    return logger.errors[0].splitlines()[0][:300] if logger.errors else fallback


def _builder(trt, logger):
    """A TensorRT builder. Raises :class:`BackendUnavailableError` when CUDA cannot initialise."""
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind raises TypeError/RuntimeError when CUDA cannot initialise
        raise BackendUnavailableError(f"TensorRT found no usable CUDA GPU: {_first_error(logger, str(exc))}") from exc
    if builder is None:
        raise BackendUnavailableError(f"TensorRT found no usable CUDA GPU: {_first_error(logger, 'Builder() failed')}")
    return builder


def _parse(trt, builder, logger, proto, info, onnx_path: Path, library, say):
    """The strongly typed network parsed from the ONNX model (avit nodes as plugins when ``library``).

    Returns:
        ``(network, parser, plugin_override, plugin_layers)``; the parser owns weights the network uses,
        so it must live as long as the network.

    Raises:
        ExportError: parser errors (each logged on its own line), or plugin layers missing for avit nodes.
    """
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # 10.x; deprecated no-op in 11 (always strong)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    plugin_override = hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE")
    if library is not None and plugin_override:
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)

    say(f"parsing {onnx_path} ({'plugins' if library is not None else 'standard ops'}, {info.precision})")
    data = prepare_onnx(proto, use_plugins=library is not None).SerializeToString()
    ok = parser.parse(data, str(onnx_path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        for line in errors:
            say(f"parser error: {line}")
        first = errors[0].splitlines()[0][:300] if errors else _first_error(logger, "unknown error")
        raise ExportError(f"TensorRT's ONNX parser failed on {onnx_path.name} ({len(errors)} errors), first: {first}")
    plugin_layers = sum(
        1 for i in range(network.num_layers) if network.get_layer(i).type == getattr(trt.LayerType, "PLUGIN_V3", None)
    )
    n_avit = sum(1 for n in proto.graph.node if n.domain == AVIT_DOMAIN)
    if library is not None and plugin_layers != n_avit:
        raise ExportError(f"the parsed network has {plugin_layers} plugin layers for {n_avit} avit nodes")
    return network, parser, plugin_override, plugin_layers


def _builder_config(trt, builder, profile, workspace_mb, tf32, cache_path: Path | None):
    """Builder config: workspace limit, TF32 off unless asked, the optimization profile, the timing cache."""
    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    shapes = profile["images"]
    opt.set_shape("images", shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(opt)
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def _sidecar(trt, proto, info, onnx_path: Path, profile, library, loader, command, cache_path, *, tf32,
             workspace_mb, plugin_override, plugin_layers) -> EngineSidecar:
    """The engine's sidecar (its SHA-256 is filled in when the engine is written)."""
    return EngineSidecar(
        engine_sha256="",
        tensorrt_version=str(trt.__version__),
        precision=info.precision,
        profile=profile,
        plugin_library=str(Path(library).resolve()) if library is not None else None,
        plugin_sha256=file_sha256(library) if library is not None else None,
        plugin_loader=loader,
        onnx_path=str(onnx_path.resolve()),
        onnx_sha256=file_sha256(onnx_path),
        metadata={p.key: p.value for p in proto.metadata_props if p.key.startswith("avit.")},
        pause_points=list(info.pause_points),
        default_thresholds=list(info.default_thresholds),
        builder={
            "strongly_typed": True,
            "tf32": tf32,
            "workspace_mb": workspace_mb,
            "timing_cache": str(cache_path) if cache_path is not None else None,
            "plugin_override_flag": plugin_override and library is not None,
            "use_plugins": library is not None,
            "plugin_layers": plugin_layers,
        },
        trtexec=command,
    )


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    plugin_library: str | os.PathLike | None = None,
    use_plugins: bool = True,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    timing_cache: str | os.PathLike | None = None,
    workspace_mb: int | None = None,
    tf32: bool = False,
    log: Callable[[str], None] | None = None,
) -> EngineReport:
    """Build a TensorRT engine from an avit ONNX model.

    Args:
        onnx_path: ONNX model exported by avit (fp32 or fp16; the network is strongly typed).
        engine_path: Output; default ``onnx_path`` with suffix ``.engine``. Its sidecar is ``<engine>.json``.
        plugin_library: The avit plugin library; default :func:`~avit.runtime.tensorrt.find_plugin_library`
            (``$AVIT_PLUGIN_LIBRARY``, then ``build/plugins`` / ``plugins/build*``).
        use_plugins: False: build the stock engine from the standard-op lowering (no plugin library).
        min_batch, opt_batch, max_batch: The batch range of the optimization profile.
        timing_cache: File to read the timing cache from (if it exists) and to write it back to.
        workspace_mb: Workspace memory-pool limit in MiB (default: TensorRT's, the GPU's memory).
        tf32: Allow TF32 for float32 matrix math (TensorRT's default is on; avit's is off so that an
            fp32 ONNX gives fp32 arithmetic, as the strongly typed network promises).
        log: Progress messages (one line each).

    Returns:
        :class:`EngineReport`.

    Raises:
        ArtifactError: bad ONNX, plugin library missing/unloadable, plugin not registered.
        InputError: bad batch sizes.
        BackendUnavailableError: TensorRT not installed, or no usable GPU.
        ExportError: the parser or the builder failed (parser errors are logged one per line; the
            message summarises them).
    """
    say = log or (lambda msg: None)
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    proto, info = read_model_info(onnx_path)
    profile = profile_shapes(info, min_batch, opt_batch, max_batch)
    trt = import_tensorrt()

    library = find_plugin_library(plugin_library) if use_plugins and info.adaptive_ops else None
    loader = None
    if library is not None:
        loader = load_plugin_library(trt, library, required=info.adaptive_ops)
        say(f"loaded plugin library {library} ({loader} registration)")

    logger = make_logger(trt, say)
    builder = _builder(trt, logger)
    # the parser owns weights the network uses: keep it alive until the engine is built
    network, parser, plugin_override, plugin_layers = _parse(trt, builder, logger, proto, info, onnx_path, library, say)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    config = _builder_config(trt, builder, profile, workspace_mb, tf32, cache_path)

    say(f"building engine (batch {min_batch}..{max_batch}, opt {opt_batch}); this takes a while")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - t0
    if serialized is None:
        raise ExportError(f"TensorRT could not build the engine: {_first_error(logger, 'see the log above')}")
    blob = memoryview(serialized)

    if cache_path is not None:
        cache_bytes = memoryview(config.get_timing_cache().serialize())
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(cache_bytes))

    command = trtexec_command(
        onnx_path, engine_path, profile, plugin_library=library, timing_cache=cache_path,
        workspace_mb=workspace_mb, tf32=tf32, plugin_override=plugin_override and library is not None,
    )
    sidecar = _sidecar(trt, proto, info, onnx_path, profile, library, loader, command, cache_path, tf32=tf32,
                       workspace_mb=workspace_mb, plugin_override=plugin_override, plugin_layers=plugin_layers)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(blob)
        sidecar.engine_sha256 = file_sha256(tmp)
        write_sidecar(engine_path, sidecar)  # atomically, before the engine appears under its name

    atomic_write(engine_path, write)
    say(f"equivalent: {command}")
    return EngineReport(
        engine_path, sidecar_path(engine_path), sidecar, command, build_seconds, engine_path.stat().st_size, plugin_layers
    )
