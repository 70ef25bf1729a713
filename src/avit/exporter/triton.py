"""avit artifact → Triton Inference Server model repository (``avit triton-repo``).

Layout written::

    <repo>/README.md                      how to start tritonserver, query it, run perf_analyzer
    <repo>/<name>/config.pbtxt            per-request thresholds (see below)
    <repo>/<name>/1/model.onnx | model.plan
    <repo>/<name>_<setting>/config.pbtxt  optional: thresholds fixed at one setting, dynamic batching
    <repo>/<name>_<setting>/1/model.onnx

**Batching and the thresholds.** The graph's ``pause_thresholds`` is one ``[P]`` tensor shared by the
whole batch, without a batch dimension. Triton's batching (``max_batch_size > 0``) prepends a batch
dimension to *every* input and concatenates requests along it, so it can neither feed a ``[P]`` input
nor keep requests with different thresholds apart (its dynamic batcher compares shapes, not values).
Hence two kinds of models:

* ``<name>`` — **per-request thresholds**: ``max_batch_size: 0`` (Triton does not batch requests
  together; a client sends its own batch ``images [n, C, H, W]``) and ``pause_thresholds [P]`` as an
  input of every request. For ONNX it is ``optional: true``: the repository's copy of the model carries
  the default thresholds as an *overridable initializer* (a graph input with a default value), so a
  request without it runs at the model's defaults (the onnxruntime backend allows optional inputs only
  in non-batching models, which this is). TensorRT engines have no default values: the input is
  required there. Parallelism comes from ``instance_group`` (several model instances).
* ``<name>_<setting>`` (``--preset`` / ``--fixed``, ONNX only) — **fixed thresholds, dynamic
  batching**: the repository's copy of the model has ``pause_thresholds`` replaced by a constant, its
  only input is ``images [C, H, W]`` per request, and Triton's dynamic batcher batches any requests of
  that model (``max_batch_size``, ``max_queue_delay_microseconds``). A client picks the quality level
  by model name. Each such model is a full copy of the weights.

Static (reference) exports have no thresholds input and get the batching configuration directly.

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

from avit._io import atomic_write
from avit.errors import ArtifactError, InputError
from avit.metadata import PREFIX, ModelInfo

#: Triton ``instance_group`` kinds by ``device``.
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclasses.dataclass
class TritonModelSpec:
    """One model of the repository, i.e. one ``config.pbtxt``.

    Attributes:
        name: Model name (= its folder).
        backend: ``"onnxruntime"`` or ``"tensorrt"``.
        images: ``(C, H, W)``.
        num_classes: Channels of ``logits``.
        num_pause_points: P (0: static model).
        thresholds_input: ``"request"`` (``pause_thresholds [P]`` per request), ``"optional"`` (the same,
            may be omitted: model defaults) or ``"none"`` (static model, or thresholds fixed in the file).
        max_batch: ``max_batch_size`` for batching models; also the largest client batch documented for
            per-request models.
        instances: ``instance_group.count``.
        kind: ``"KIND_AUTO"`` / ``"KIND_CPU"`` / ``"KIND_GPU"``.
        max_queue_delay_us: Dynamic batcher delay (batching models only).
        intra_op_threads: onnxruntime ``intra_op_thread_count`` (None: backend default).
        fixed_thresholds: The thresholds baked into the file (fixed models), else None.
        comment: Lines written as ``#`` comments at the top.
    """

    name: str
    backend: str
    images: tuple[int, int, int]
    num_classes: int
    num_pause_points: int
    thresholds_input: str
    max_batch: int = 8
    instances: int = 1
    kind: str = "KIND_AUTO"
    max_queue_delay_us: int = 500
    intra_op_threads: int | None = None
    fixed_thresholds: tuple[float, ...] | None = None
    comment: tuple[str, ...] = ()

    @property
    def batching(self) -> bool:
        """Whether Triton batches requests (``max_batch_size > 0``): only without a thresholds input."""
        return self.thresholds_input == "none"

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx" if self.backend == "onnxruntime" else "tensorrt_plan"

    @property
    def model_filename(self) -> str:
        return "model.onnx" if self.backend == "onnxruntime" else "model.plan"


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def config_pbtxt(spec: TritonModelSpec) -> str:
    """The ``config.pbtxt`` text (Triton's ``ModelConfig`` protobuf in text format) of ``spec``."""
    c, h, w = spec.images
    batch = [] if spec.batching else [-1]
    lines = [f"# {line}" for line in spec.comment]
    lines += [
        f'name: "{spec.name}"',
        f'platform: "{spec.platform}"',
        f'backend: "{spec.backend}"',
        f'default_model_filename: "{spec.model_filename}"',
        f"max_batch_size: {spec.max_batch if spec.batching else 0}",
        "input [",
        "  {",
        '    name: "images"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims([*batch, c, h, w])}",
        "  }",
    ]
    if spec.thresholds_input in ("request", "optional"):
        lines[-1] += ","
        lines += [
            "  {",
            '    name: "pause_thresholds"',
            "    data_type: TYPE_FP32",
            f"    dims: {_dims([spec.num_pause_points])}",
            *(["    optional: true"] if spec.thresholds_input == "optional" else []),
            "  }",
        ]
    lines += [
        "]",
        "output [",
        "  {",
        '    name: "logits"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims([*batch, spec.num_classes, h, w])}",
        "  },",
        "  {",
        '    name: "tokens_kept"',
        "    data_type: TYPE_INT64",
        f"    dims: {_dims([*batch, spec.num_pause_points])}",
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {spec.instances}",
        f"    kind: {spec.kind}",
        "  }",
        "]",
    ]
    if spec.batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}", "}"]
    if spec.intra_op_threads is not None and spec.backend == "onnxruntime":
        lines += ['parameters { key: "intra_op_thread_count" value: { string_value: "%d" } }' % spec.intra_op_threads]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- ONNX copies
def _json(values: Sequence[float]) -> str:
    return json.dumps(["inf" if math.isinf(v) else float(v) for v in values])


def onnx_with_thresholds(model, thresholds: Sequence[float], *, keep_input: bool):
    """A copy of an avit ONNX ``ModelProto`` whose ``pause_thresholds`` has the value ``thresholds``.

    Args:
        keep_input: True: stays a graph input with that *default* (an overridable initializer; ONNX
            Runtime uses it when the input is not fed). False: becomes a constant (the input is gone).

    Also records the setting in the metadata: ``avit.default_thresholds`` = ``thresholds`` and
    ``avit.thresholds_input`` = ``"optional"`` / ``"fixed"``.
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


def write_triton_repository(
    model: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    max_batch: int = 8,
    instances: int = 1,
    device: str = "auto",
    presets: Sequence[str] = (),
    fixed: Mapping[str, Sequence[float]] | None = None,
    max_queue_delay_us: int = 500,
    intra_op_threads: int | None = None,
    plugin_library: str | Path | None = None,
    overwrite: bool = False,
) -> TritonRepository:
    """Write a Triton model repository serving ``model`` (``.onnx`` or ``.engine``).

    Args:
        model: The avit artifact. An engine needs its sidecar ``<engine>.json``.
        output: Repository folder (created; must not hold these models yet unless ``overwrite``).
        name: Model name (default: the file's stem).
        max_batch: ``max_batch_size`` of batching models; for per-request models the largest client
            batch the README mentions (engines: the profile's max batch is used).
        instances: Model instances (``instance_group.count``).
        device: ``"auto"`` | ``"cpu"`` | ``"gpu"`` (engines: gpu).
        presets: Calibration presets (``<model>.calib.json``) to add as fixed-threshold models ``<name>_<preset>``.
        fixed: More fixed-threshold models: ``{"fast": [0.6, 0.6]}`` → ``<name>_fast``.
        max_queue_delay_us: Dynamic batcher delay of the batching models.
        intra_op_threads: onnxruntime ``intra_op_thread_count``.
        plugin_library: Engines: the plugin library the README's command loads (default: the
            sidecar's, $AVIT_PLUGIN_LIBRARY, the build folders; None is allowed and noted).
        overwrite: Replace existing model folders of the same names.

    Raises:
        ArtifactError: not an avit artifact, engine without sidecar, no calibration for ``presets``.
        InputError: bad names or numbers, fixed thresholds for an engine or a static model, existing
            folders without ``overwrite``.
    """
    import onnx

    from avit.runtime import tensorrt as trt_support

    model = Path(model)
    if not model.is_file():
        raise ArtifactError(f"model not found: {model}")
    suffix = model.suffix.lower()
    if suffix not in (".onnx", ".engine", ".plan", ".trt"):
        raise ArtifactError(f"{model} is not an avit artifact (expected .onnx or .engine)")
    if max_batch < 1 or instances < 1 or max_queue_delay_us < 0:
        raise InputError("max_batch and instances must be >= 1, max_queue_delay_us >= 0")
    if device not in KINDS:
        raise InputError(f"device must be one of {', '.join(KINDS)}, got {device!r}")
    name = _check_name(name or model.stem.replace(".", "_"))
    engine = suffix != ".onnx"
    proto = sidecar = None
    if engine:
        sidecar = trt_support.read_sidecar(model)
        info = sidecar.info
        if device == "cpu":
            raise InputError("TensorRT engines run on a GPU: use --device gpu (or auto)")
        max_batch = sidecar.max_batch
    else:
        try:
            proto = onnx.load(str(model))
        except Exception as exc:  # onnx raises DecodeError, OSError, …
            raise ArtifactError(f"{model} is not a loadable ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        info = ModelInfo.from_props({p.key: p.value for p in proto.metadata_props}, where=str(model))
    p = info.num_pause_points

    settings: dict[str, tuple[float, ...]] = {}
    if presets:
        from avit.metadata.calibration import calibration_path, load_calibration

        calib_file = calibration_path(model)
        if not calib_file.is_file():
            raise ArtifactError(f"--preset needs {calib_file.name} beside the model (run: avit calibrate {model})")
        calib = load_calibration(calib_file)
        calib.check_model(info, model)
        for preset in presets:
            if preset not in calib.presets:
                raise InputError(f"unknown preset {preset!r}; known: {', '.join(sorted(calib.presets))}")
            settings[preset] = tuple(calib.presets[preset].thresholds)
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

    c = int(info.config.get("in_chans", 3))
    h, w = (int(v) for v in info.input_size)
    num_classes = int(info.config["num_classes"])
    kind = "KIND_GPU" if engine else KINDS[device]
    base = dict(
        backend="tensorrt" if engine else "onnxruntime",
        images=(c, h, w),
        num_classes=num_classes,
        num_pause_points=p,
        instances=int(instances),
        kind=kind,
        max_queue_delay_us=int(max_queue_delay_us),
        intra_op_threads=intra_op_threads,
    )
    about = f"avit {info.variant} model from {model.name}: pause points {list(info.pause_points)}, policy {info.policy}"
    specs: list[tuple[TritonModelSpec, object]] = []
    if p == 0:
        specs.append((TritonModelSpec(name, thresholds_input="none", max_batch=max_batch, comment=(about,), **base), proto))
    else:
        mode = "request" if engine else "optional"
        comment = (
            about,
            f"pause_thresholds [{p}] per request ({'required' if engine else 'optional: default ' + _json(info.default_thresholds)}); "
            "max_batch_size 0: Triton does not batch requests (the thresholds are shared by a batch), clients send [n, C, H, W]",
        )
        payload = proto if engine else onnx_with_thresholds(proto, info.default_thresholds, keep_input=True)
        specs.append((TritonModelSpec(name, thresholds_input=mode, max_batch=max_batch, comment=comment, **base), payload))
        for key, values in settings.items():
            comment = (about, f"pause_thresholds fixed at {_json(values)} ({key}); dynamic batching of any requests")
            specs.append(
                (
                    TritonModelSpec(
                        _check_name(f"{name}_{key}"), thresholds_input="none", max_batch=max_batch,
                        fixed_thresholds=values, comment=comment, **base,
                    ),
                    onnx_with_thresholds(proto, values, keep_input=False),
                )
            )

    root = Path(output)
    names = [spec.name for spec, _ in specs]
    if len(set(names)) != len(names):
        raise InputError(f"model names collide: {names}")
    existing = [n for n in names if (root / n).exists()]
    if existing and not overwrite:
        raise InputError(f"{root} already holds {', '.join(existing)} (use --overwrite to replace)")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a folder")

    library = None
    if engine and sidecar.plugin_library is not None:
        try:
            recorded = Path(sidecar.plugin_library)
            library = trt_support.find_plugin_library(
                plugin_library if plugin_library is not None else (recorded if recorded.is_file() else None)
            )
        except ArtifactError:
            if plugin_library is not None:
                raise
            library = None

    for spec, payload in specs:
        folder = root / spec.name
        if folder.exists():
            shutil.rmtree(folder)
        target = folder / "1" / spec.model_filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if engine:
            atomic_write(target, lambda tmp: shutil.copyfile(model, tmp))
        else:
            atomic_write(target, lambda tmp, m=payload: onnx.save(m, tmp))
        atomic_write(folder / "config.pbtxt", lambda tmp, s=spec: Path(tmp).write_text(config_pbtxt(s)))
    models = [spec for spec, _ in specs]
    readme = atomic_write(
        root / "README.md",
        lambda tmp: Path(tmp).write_text(repository_readme(root, models, info, engine=engine, sidecar=sidecar, plugin_library=library)),
    )
    return TritonRepository(root, models, readme, library)


def repository_readme(root: Path, models: list[TritonModelSpec], info: ModelInfo, *, engine: bool, sidecar=None, plugin_library=None) -> str:
    """The repository's README: models, server command, a client call, perf_analyzer."""
    first = models[0]
    c, h, w = first.images
    p = first.num_pause_points
    lines = [
        f"# Triton model repository for `{first.name}` (written by `avit triton-repo`)",
        "",
        "| model | thresholds | Triton batching | input per request |",
        "|---|---|---|---|",
    ]
    for spec in models:
        if spec.thresholds_input == "none" and spec.fixed_thresholds is not None:
            what = f"fixed {_json(spec.fixed_thresholds)}"
        elif spec.thresholds_input == "none":
            what = "none (static model)"
        else:
            what = f"`pause_thresholds` [{p}] per request" + (" (optional: model defaults)" if spec.thresholds_input == "optional" else "")
        batching = f"dynamic, max {spec.max_batch}" if spec.batching else "none (`max_batch_size: 0`)"
        shape = f"images [{c}, {h}, {w}]" if spec.batching else f"images [n, {c}, {h}, {w}]"
        lines.append(f"| `{spec.name}` | {what} | {batching} | {shape} |")
    lines += [
        "",
        "Why two kinds: `pause_thresholds` is one tensor per model call, shared by the batch, so Triton can",
        "only batch requests whose thresholds are the same. Per-request models do not batch across requests",
        "(send several images in one request instead); fixed-threshold models batch everything.",
        "",
        "## Start the server",
        "",
        "```bash",
    ]
    if engine:
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
    else:
        lines += [
            f"tritonserver --model-repository={root.resolve()}",
            "# in a container: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/repo:/models \\",
            "#   nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
            "```",
        ]
    thresholds = ", ".join("0.3" for _ in range(p))
    lines += [
        "",
        "## Query it (Python, `pip install tritonclient[http]`)",
        "",
        "```python",
        "import numpy as np, tritonclient.http as http",
        "from avit.runtime import AdaptiveSession            # or preprocess yourself: resize, /255, (x - mean) / std",
        "client = http.InferenceServerClient('localhost:8000')",
        f"x = np.random.rand(2, {c}, {h}, {w}).astype(np.float32)   # preprocessed images",
    ]
    if first.batching:
        lines += [
            f"inp = http.InferInput('images', [1, {c}, {h}, {w}], 'FP32'); inp.set_data_from_numpy(x[:1])",
            f"out = client.infer('{first.name}', [inp])",
        ]
    else:
        lines += [
            f"inp = http.InferInput('images', list(x.shape), 'FP32'); inp.set_data_from_numpy(x)",
            f"t = http.InferInput('pause_thresholds', [{p}], 'FP32'); t.set_data_from_numpy(np.array([{thresholds}], np.float32))",
            f"out = client.infer('{first.name}', [inp, t])        # per-request thresholds"
            + ("; omit t for the model's defaults" if first.thresholds_input == "optional" else ""),
        ]
    lines += [
        "out.as_numpy('logits').shape, out.as_numpy('tokens_kept')",
        "```",
        "",
        "## Measure it (perf_analyzer, from the Triton SDK container)",
        "",
        "```bash",
    ]
    for spec in models:
        if spec.batching:
            lines.append(f"perf_analyzer -m {spec.name} -b 4 --concurrency-range 1:8 --shape images:{c},{h},{w}")
        else:
            shape = f"--shape images:4,{c},{h},{w} --shape pause_thresholds:{p}"
            lines.append(f"perf_analyzer -m {spec.name} {shape} --concurrency-range 1:4   # random thresholds: use --input-data for fixed ones")
    lines += ["```", ""]
    return "\n".join(lines)
