"""The OpenVINO backend: avit models on OpenVINO Runtime (CPU), from an OpenVINO IR or an avit ``.onnx``.

Two ways in:

* ``model.openvino.xml`` (+ ``.bin``), the OpenVINO IR written by ``avit export --openvino``: float32
  weights, avit's metadata in the IR's ``rt_info["framework"]``, token heads marked to stay float32.
* ``model.onnx`` with ``backend="openvino"``: the avit export itself. OpenVINO's ONNX frontend does not
  expand model-local functions, and avit's adaptive ops (``avit::Avit*``) are model-local functions, so
  the graph is inlined with ``onnx.inliner.inline_local_functions`` at load (about 0.1 s); the file on
  disk stays as it is (the TensorRT path needs its functions: the plugins replace them).

Inference precision (OpenVINO's ``INFERENCE_PRECISION_HINT``): ``"auto"`` (default: ``"bf16"`` where
the CPU runs bfloat16 natively — OpenVINO lists ``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES``,
i.e. AVX512-BF16 or AMX — else ``"f32"``), ``"f32"`` (matches ONNX Runtime to ~1e-5) or ``"bf16"``
(about 2× faster on the real model, a few pause decisions move; see docs/openvino.md for the
measurements). The backend's :attr:`OpenVINOBackend.inference_precision` is the precision chosen. Under bf16 the CPU plugin keeps the
graph's "tail" in float32 (every node between an output and the last matrix multiply before it), which
includes the token scores and the threshold comparison of every pause point (they feed ``tokens_kept``).
:func:`mark_token_heads` additionally marks each token head and select op with OpenVINO's
``DisableFP16Compression`` attribute (rt_info ``precise_0``), which the CPU plugin honours for nodes
it keeps as they are (the heads' LayerNorm); the heads' linear layers still run in bf16, because the
plugin fuses each with its bias into a new node that does not inherit the attribute.

Thread safety: one compiled model; each :meth:`OpenVINOBackend.infer` borrows an ``InferRequest`` from
a pool that grows to the number of concurrent callers (an infer request runs one inference at a time;
OpenVINO releases the GIL while it runs).

Torch-free: OpenVINO, ONNX and NumPy only; OpenVINO is imported when a backend is opened, so avit
works without it (``pip install 'avit[openvino]'``).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np

from avit.errors import ArtifactError, BackendUnavailableError

#: Values of ``inference_precision``; ``"auto"`` resolves to one of the others (:func:`resolve_precision`).
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
#: Suffix of the IR written next to ``model.onnx`` (``model.openvino.xml`` + ``model.openvino.bin``).
IR_SUFFIX = ".openvino.xml"
#: The select ops whose decisions a token head drives (see :mod:`avit.ops`).
SELECT_OPS = ("AvitEntropySelect", "AvitKeepRatioSelect", "AvitClassContextSelect")
#: rt_info key of OpenVINO's ``DisableFP16Compression`` attribute ("keep this node in its original
#: precision"); OpenVINO's serializer turns the string key into the attribute.
PRECISE_KEY = "precise_0"


def import_openvino():
    """The ``openvino`` module. Raises :class:`BackendUnavailableError` (one line) when it is not installed."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'avit[openvino]'") from None
    return openvino


def ir_path(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` → ``model.openvino.xml`` (the weights go to ``model.openvino.bin``)."""
    path = Path(onnx_path)
    return path.with_name(path.name[: -len(path.suffix)] + IR_SUFFIX if path.suffix else path.name + IR_SUFFIX)


def bin_path(xml_path: str | os.PathLike) -> Path:
    """The weights file of an IR: ``model.openvino.xml`` → ``model.openvino.bin``."""
    return Path(xml_path).with_suffix(".bin")


def is_ir(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OpenVINO IR (``.xml``)."""
    return Path(path).suffix.lower() == ".xml"


def _namespace(node) -> str:
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return prop.value
    return ""


def token_head_regions(proto) -> list[tuple[set[str], list[str]]]:
    """Per pause point, the boundary of its token head and select op in an avit ONNX graph.

    Args:
        proto: ``onnx.ModelProto`` as exported (before inlining): the token heads are the nodes whose
            exporter ``namespace`` metadata names ``pause_heads.<p>``, the select ops the ``avit``
            domain nodes in :data:`SELECT_OPS`, in graph order.

    Returns:
        ``[(head_inputs, select_outputs), ...]`` in pause-point order: the tensor names entering head
        ``p`` from the backbone, and the outputs of select op ``p``. The region between them is the
        head plus the score computation and selection. Empty for a static model or a graph without
        select ops (e.g. an optimized one).
    """
    heads: dict[int, list] = {}
    for node in proto.graph.node:
        match = re.search(r"pause_heads\.(\d+)", _namespace(node))
        if match:
            heads.setdefault(int(match.group(1)), []).append(node)
    initializers = {i.name for i in proto.graph.initializer}
    selects = [n for n in proto.graph.node if n.domain == "avit" and n.op_type in SELECT_OPS]
    regions = []
    for p, select in enumerate(selects):
        nodes = heads.get(p, [])
        produced = {o for n in nodes for o in n.output}
        inputs = {i for n in nodes for i in n.input if i and i not in produced and i not in initializers}
        if not inputs:  # no head metadata (not a dynamo export): the select op's internals only
            inputs = {i for i in select.input if i}
        regions.append((inputs, [o for o in select.output if o]))
    return regions


def mark_token_heads(model, regions: list[tuple[set[str], list[str]]]) -> int:
    """Mark every node of ``model`` (an ``openvino.Model``) between a head's inputs and its select op's
    outputs with :data:`PRECISE_KEY`, so that a bf16 compilation keeps it float32 where the CPU plugin
    honours the attribute (see the module docstring). The marks take effect once the model went
    through OpenVINO's serializer (:func:`save_ir`, or :func:`_reload`).

    Region of pause point ``p``: ancestors of select ``p``'s outputs that are not ancestors of head
    ``p``'s inputs (the backbone before the head, earlier heads included, is outside).

    Returns:
        Number of nodes marked.
    """
    by_name = {}
    for node in model.get_ordered_ops():
        for output in node.outputs():
            for name in output.get_names():
                by_name[name] = node
    marked: dict[int, object] = {}
    for inputs, outputs in regions:
        outside: set[int] = set()
        todo = [by_name[n] for n in inputs if n in by_name]
        while todo:
            node = todo.pop()
            if node.get_instance_id() in outside:
                continue
            outside.add(node.get_instance_id())
            todo.extend(v.get_node() for v in node.input_values())
        todo = [by_name[n] for n in outputs if n in by_name]
        while todo:
            node = todo.pop()
            key = node.get_instance_id()
            if key in outside or key in marked:
                continue
            marked[key] = node
            todo.extend(v.get_node() for v in node.input_values())
    for node in marked.values():
        if node.get_type_name() not in ("Parameter", "Constant", "Result"):
            node.get_rt_info()[PRECISE_KEY] = ""
    return sum(1 for n in marked.values() if n.get_type_name() not in ("Parameter", "Constant", "Result"))


def load_onnx_proto(source):
    """``source`` (path or ``onnx.ModelProto``) → ModelProto. Raises :class:`ArtifactError` (missing, not
    ONNX, or no avit metadata: :func:`avit.metadata.onnx_file.read_onnx`)."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source
    from avit.metadata.onnx_file import read_onnx

    return read_onnx(source)[0]


def pad_empty_selections(proto):
    """A copy of ``proto`` whose select ops never produce an empty token tensor: ``AvitCompact`` (the
    compaction inside every select op, :mod:`avit.ops._common`) makes ``keep_idx`` ``[B, max(1, m)]``
    instead of ``[B, m]``.

    Why: OpenVINO's CPU plugin (measured with 2026.4.1) goes wrong once a graph with dynamic shapes has
    run with a zero-sized token tensor: after one call in which every token paused at the first pause
    point, later calls on the same compiled model pause the wrong tokens at the second one (f32 and
    bf16; ``tokens_kept`` [1015, 1015] instead of [1015, 855] on the real model), and under bf16 a call
    that pauses everything at the last point makes later calls return NaN logits. A batch that keeps no
    token gets one padding slot (``counts`` stays 0, so every later op ignores it, as it ignores the
    padding of images that keep fewer tokens than others in a padded batch): outputs are unchanged and
    the graph never sees an empty token tensor.
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for function in out.functions:
        if function.domain != "avit" or function.name != "AvitCompact":
            continue
        for i, node in enumerate(function.node):
            if node.op_type == "ReduceMax" and list(node.output) == ["m"]:
                node.output[0] = "m_unpadded"
                one = helper.make_node("Constant", [], ["m_floor"], value_ints=[1])
                floor = helper.make_node("Max", ["m_unpadded", "m_floor"], ["m"])
                function.node.insert(i + 1, one)
                function.node.insert(i + 2, floor)
                break
    return out


def model_from_onnx(source, *, core=None, mark_heads: bool = True):
    """An avit ONNX model (path or ModelProto) as an ``openvino.Model``: no empty token tensors
    (:func:`pad_empty_selections`), local functions inlined, token heads marked (:func:`mark_token_heads`),
    ONNX metadata in ``rt_info["framework"]``.

    Raises:
        BackendUnavailableError: OpenVINO is not installed.
        ArtifactError: not an ONNX model, or one OpenVINO cannot convert.
    """
    import onnx
    import onnx.inliner

    ov = import_openvino()
    proto = load_onnx_proto(source)
    regions = token_head_regions(proto) if mark_heads else []
    inlined = onnx.inliner.inline_local_functions(pad_empty_selections(proto))
    core = core or ov.Core()
    try:
        model = core.read_model(io.BytesIO(inlined.SerializeToString()))
    except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with long reports
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"OpenVINO cannot convert this ONNX model: {first}") from exc
    for prop in proto.metadata_props:  # the frontend copies them too; set them explicitly all the same
        model.set_rt_info(prop.value, ["framework", prop.key])
    if regions:
        mark_token_heads(model, regions)
    return model


def save_ir(model, xml_path: str | os.PathLike) -> None:
    """Write ``model`` as IR at ``xml_path`` (+ ``.bin``) with float32 weights (OpenVINO compresses
    weights to fp16 by default; ``compress_to_fp16=False`` keeps them as exported)."""
    ov = import_openvino()
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def _reload(core, model):
    """``model`` through OpenVINO's serializer and back, so that string rt_info marks become attributes."""
    with tempfile.TemporaryDirectory(prefix="avit-ov-") as folder:
        xml = Path(folder) / "model.xml"
        save_ir(model, xml)
        return core.read_model(xml.read_bytes(), bin_path(xml).read_bytes())


def ir_metadata(model) -> dict[str, str]:
    """The ``avit.*`` (and any other) entries of an ``openvino.Model``'s ``rt_info["framework"]``."""
    if not model.has_rt_info("framework"):
        return {}
    entries = model.get_rt_info("framework").astype(dict)
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in entries.items()}


def bf16_supported(core, device: str = "CPU") -> bool:
    """Whether ``device`` runs bfloat16 natively (``OPTIMIZATION_CAPABILITIES`` lists ``BF16``)."""
    return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_precision(core, inference_precision: str, device: str = "CPU") -> None:
    """Raise unless ``inference_precision`` is one of :data:`INFERENCE_PRECISIONS` and runs natively.

    Raises:
        InputError: unknown precision.
        BackendUnavailableError: bf16 on a device without native bfloat16.
    """
    from avit.errors import InputError

    if inference_precision not in INFERENCE_PRECISIONS:
        raise InputError(f"inference precision {inference_precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
    if inference_precision == "bf16" and not bf16_supported(core, device):
        raise BackendUnavailableError(
            f"inference precision bf16 needs native bfloat16 (AVX512-BF16 or AMX), which this {device} lacks; use f32 or auto"
        )


def resolve_precision(core, inference_precision: str = "auto", device: str = "CPU") -> str:
    """The precision to compile for: ``"auto"`` → ``"bf16"`` where ``device`` runs bfloat16 natively, else
    ``"f32"``; an explicit value is checked (:func:`check_precision`) and returned.

    Raises:
        InputError: unknown precision.
        BackendUnavailableError: bf16 asked for on a device without native bfloat16.
    """
    check_precision(core, inference_precision, device)
    if inference_precision == "auto":
        return "bf16" if bf16_supported(core, device) else "f32"
    return inference_precision


def load_model(source, core, inference_precision: str = "f32"):
    """An ``openvino.Model`` ready to compile at ``inference_precision``.

    Args:
        source: An IR ``.xml`` path (its ``.bin`` beside it), an avit ``.onnx`` path, or an
            ``onnx.ModelProto`` (converted with :func:`model_from_onnx`; under bf16 its token-head marks
            go through OpenVINO's serializer so that they take effect).
        core: The ``openvino.Core``.
        inference_precision: What it will be compiled for.

    Raises:
        ArtifactError: missing file or ``.bin``, or a file OpenVINO cannot read.
    """
    if not isinstance(source, (str, os.PathLike)) or not is_ir(source):
        model = model_from_onnx(source, core=core, mark_heads=inference_precision != "f32")
        return _reload(core, model) if inference_precision != "f32" else model
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(f"model not found: {path}")
    if not bin_path(path).is_file():
        raise ArtifactError(f"{path} has no weights file {bin_path(path).name} beside it")
    try:
        return core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line reports
        raise ArtifactError(f"{path} is not a loadable OpenVINO IR: {_first_line(exc)}") from exc


def compile_model(model, core, inference_precision: str = "f32", intra_op_threads: int | None = None, device: str = "CPU"):
    """``core.compile_model`` with avit's settings: latency hint, ``INFERENCE_PRECISION_HINT``,
    ``INFERENCE_NUM_THREADS`` (None/0: OpenVINO's default). Raises :class:`ArtifactError`."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
    if intra_op_threads:
        config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
    try:
        return core.compile_model(model, device, config)
    except Exception as exc:
        raise ArtifactError(f"OpenVINO could not compile the model for {device}: {_first_line(exc)}") from exc


class OpenVINOBackend:
    """OpenVINO Runtime over an avit IR (``.xml``) or an avit ``.onnx`` (inlined at load).

    Args:
        path: ``model.openvino.xml`` (its ``.bin`` beside it) or ``model.onnx``.
        inference_precision: ``"auto"`` (default: bf16 where the CPU has native bfloat16, else f32),
            ``"f32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        intra_op_threads: OpenVINO's ``INFERENCE_NUM_THREADS`` (None/0: its default, one per core).
        device: OpenVINO device; avit is measured on ``"CPU"``.

    Attributes:
        inference_precision: The precision compiled for, ``"f32"`` or ``"bf16"`` (``"auto"`` resolved).
        requested_precision: What was asked for (``"auto"``, ``"f32"`` or ``"bf16"``).
        device: The device compiled for.
        compiled: The ``openvino.CompiledModel``.

    Raises:
        BackendUnavailableError: OpenVINO missing, or bf16 asked for on a device without native bf16.
        ArtifactError: missing file (or ``.bin``), not a model OpenVINO reads, or compilation failed.
        InputError: unknown ``inference_precision``.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike,
        inference_precision: str = "auto",
        intra_op_threads: int | None = None,
        device: str = "CPU",
    ) -> None:
        ov = import_openvino()
        self.core = ov.Core()
        self.requested_precision = inference_precision
        inference_precision = resolve_precision(self.core, inference_precision, device)
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"model not found: {path}")
        model = load_model(path, self.core, inference_precision)
        self._metadata = ir_metadata(model)
        self._inputs = [i.get_any_name() for i in model.inputs]
        self.compiled = compile_model(model, self.core, inference_precision, intra_op_threads, device)
        self.inference_precision = inference_precision
        self.device = device
        self._idle: list = []
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def _acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.compiled.create_infer_request()

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run once (thread-safe): ``(logits float32 [B, C, H, W], tokens_kept int64 [B, P])``."""
        request = self._acquire()
        try:
            request.infer({k: v for k, v in feeds.items() if k in self._inputs}, share_inputs=True)
            logits = np.array(request.get_tensor("logits").data, dtype=np.float32, copy=True)
            tokens_kept = np.array(request.get_tensor("tokens_kept").data, dtype=np.int64, copy=True)
        finally:
            with self._lock:
                self._idle.append(request)
        return logits, tokens_kept

    def runtime_precisions(self) -> dict[str, str]:
        """Compiled node name → the precision it runs in (``runtimePrecision`` of the runtime model)."""
        out = {}
        for node in self.compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            out[node.get_friendly_name()] = info["runtimePrecision"].astype(str)
        return out
