"""The registry of adaptive ops and the ONNX plumbing they share.

Every adaptive op is defined once, in its own module of :mod:`avit.ops`, as an :class:`AdaptiveOp`:

* a ``torch.library`` custom op (``torch.ops.avit.<name>``) with its PyTorch reference kernel and its
  fake (meta) kernel, so eager PyTorch, ``torch.export`` and the ONNX exporter all see the same op;
* its ONNX *lowering*: an onnxscript function over standard ONNX ops (opset :data:`ONNX_OPSET`) that
  stock ONNX Runtime executes;
* the name of its TensorRT plugin (``plugins/<folder>/``), whose host kernel the test-suite executes.

In an exported graph each adaptive op appears as **one node** of domain ``avit`` whose ``op_type``
equals the plugin name (e.g. ``avit::AvitEntropySelect``), and the model carries an ONNX *model-local
function* of the same domain and name holding the standard-op lowering. ONNX Runtime inlines the local
function; TensorRT's ONNX parser instantiates the registered plugin of that name instead
(see ``docs/plugins.md``). The node is therefore recognisable, replaceable and runnable everywhere.

Why not let the exporter keep the onnxscript function itself: ``torch.onnx.export`` runs the onnxscript
version converter, which inlines every function (onnxscript 0.7). So the exporter emits an opaque
``avit`` node (its schema registered with :func:`onnx.defs.register_schema`) and
:func:`attach_functions` adds the function bodies afterwards.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence

import onnx
import onnxscript
import torch

#: ONNX domain of every adaptive op node and local function.
AVIT_DOMAIN = "avit"
#: Version of the ``avit`` opset.
AVIT_OPSET_VERSION = 1
#: Default-domain opset of exported graphs and of the op lowerings (TensorRT >= 8.6 parses it).
ONNX_OPSET = 18
#: TensorRT plugin namespace of the avit plugins.
PLUGIN_NAMESPACE = "avit"
#: TensorRT plugin version of the avit plugins.
PLUGIN_VERSION = "1"

avit_opset = onnxscript.values.Opset(AVIT_DOMAIN, AVIT_OPSET_VERSION)

#: Attributes every ``avit`` node carries so TensorRT's ONNX parser instantiates the registered plugin
#: (namespace ``avit``) instead of inlining the local function (see docs/plugins.md).
PLUGIN_ATTRIBUTES = (
    ("plugin_namespace", onnx.defs.OpSchema.AttrType.STRING, "TensorRT plugin namespace", PLUGIN_NAMESPACE),
    ("plugin_version", onnx.defs.OpSchema.AttrType.STRING, "TensorRT plugin version", PLUGIN_VERSION),
)

#: Feature / logit types an adaptive op accepts (fp32 graphs; fp16 graphs for TensorRT).
FLOAT_TYPES = ("tensor(float)", "tensor(float16)")


@dataclasses.dataclass(frozen=True)
class AdaptiveOp:
    """One adaptive op and all its lowerings.

    Attributes:
        onnx_name: ONNX ``op_type`` in domain ``avit``; equals the TensorRT plugin name.
        torch_op: The ``torch.ops.avit.*`` overload (reference + fake kernel).
        lowering: onnxscript function (domain ``avit``, name ``onnx_name``) over standard ONNX ops.
        helpers: Further onnxscript functions the lowering calls (attached alongside it).
        schema: The ONNX schema of the ``avit`` node (inputs, outputs, attributes).
        plugin_dir: Folder of the TensorRT plugin and its host kernel, relative to the repository root;
            None = no plugin yet: its schema and node carry no plugin attributes, so every TensorRT
            parser inlines the model-local function (the standard-op lowering), and
            :func:`registered_ops` leaves the op out unless asked for it.
        output_ranks: Rank of each output.
    """

    onnx_name: str
    torch_op: torch._ops.OpOverload
    lowering: onnxscript.OnnxFunction
    schema: onnx.defs.OpSchema
    plugin_dir: str | None
    output_ranks: tuple[int, ...]
    helpers: tuple[onnxscript.OnnxFunction, ...] = ()

    def translation(self) -> Callable:
        """The dynamo exporter's translation of :attr:`torch_op`: emit one opaque ``avit::<onnx_name>`` node.

        The exporter reads inputs vs. attributes off the function's signature and annotations, so the
        translation carries the lowering's (e.g. ``score_mode: int`` is an attribute).
        """
        node_op = onnxscript.values.Op(avit_opset, self.onnx_name, self.schema)
        python_fn = self.lowering.function
        signature = inspect.signature(python_fn)
        n_inputs = len(self.schema.inputs)
        attribute_names = list(signature.parameters)[n_inputs:]
        has_plugin = self.plugin_dir is not None

        def translate(*args, **kwargs):
            # Attributes go by name: the schema orders its attributes differently from the signature.
            kwargs.update(zip(attribute_names, args[n_inputs:]))
            if has_plugin:
                kwargs.setdefault("plugin_namespace", PLUGIN_NAMESPACE)
                kwargs.setdefault("plugin_version", PLUGIN_VERSION)
            else:  # no plugin: leave the attributes off so TensorRT's parser inlines the local function
                kwargs.pop("plugin_namespace", None)
                kwargs.pop("plugin_version", None)
            return node_op(*args[:n_inputs], **kwargs)

        translate.__signature__ = signature
        translate.__annotations__ = typing.get_type_hints(python_fn)
        translate.__name__ = translate.__qualname__ = f"translate_{self.onnx_name}"
        return translate


_REGISTRY: dict[str, AdaptiveOp] = {}


def make_schema(
    name: str,
    doc: str,
    inputs: Sequence[tuple[str, str]],
    outputs: Sequence[tuple[str, str]],
    attributes: Sequence[tuple[str, onnx.defs.OpSchema.AttrType, str, object]] = (),
) -> onnx.defs.OpSchema:
    """Build the ONNX schema of an ``avit`` node.

    Args:
        name: ``op_type``.
        doc: One paragraph documenting the op.
        inputs, outputs: ``(name, types)`` pairs; ``types`` a type string such as ``"tensor(int64)"`` or a
            list of them, e.g. :data:`FLOAT_TYPES`.
        attributes: ``(name, AttrType, description, default)``; ``default`` None = required.
    """
    type_params: dict[str, str | Sequence[str]] = {}

    def formal(params, kind):
        out = []
        for i, (pname, ptype) in enumerate(params):
            tp = f"{kind}{i}"
            type_params[tp] = ptype
            out.append(onnx.defs.OpSchema.FormalParameter(pname, tp))
        return out

    ins = formal(inputs, "TI")
    outs = formal(outputs, "TO")
    attrs = []
    for aname, atype, adoc, default in attributes:
        if default is None:
            attrs.append(onnx.defs.OpSchema.Attribute(aname, atype, adoc, required=True))
        else:
            attrs.append(
                onnx.defs.OpSchema.Attribute(aname, onnx.helper.make_attribute(aname, default), adoc)
            )
    constraints = [(tp, [t] if isinstance(t, str) else list(t), f"type of {tp}") for tp, t in type_params.items()]
    return onnx.defs.OpSchema(
        name,
        AVIT_DOMAIN,
        AVIT_OPSET_VERSION,
        doc=doc,
        inputs=ins,
        outputs=outs,
        type_constraints=constraints,
        attributes=attrs,
    )


def register(op: AdaptiveOp) -> AdaptiveOp:
    """Add ``op`` to the registry and register its ONNX schema with :mod:`onnx.defs` (idempotent)."""
    if not onnx.defs.has(op.onnx_name, op.schema.since_version, AVIT_DOMAIN):
        onnx.defs.register_schema(op.schema)
    _REGISTRY[op.onnx_name] = op
    return op


def registered_ops(include_lowering_only: bool = False) -> dict[str, AdaptiveOp]:
    """The adaptive ops backed by a TensorRT plugin (the ones a plugin library provides), by ONNX op_type.

    ``include_lowering_only``: also the ops that have no plugin yet (``plugin_dir`` None), which run
    through their standard-op lowering everywhere (see docs/methods.md).
    """
    return {name: op for name, op in _REGISTRY.items() if include_lowering_only or op.plugin_dir is not None}


def custom_translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """The ``custom_translation_table`` for :func:`torch.onnx.export` (dynamo) covering every op."""
    return {op.torch_op: op.translation() for op in _REGISTRY.values()}


def lowering_functions(op: AdaptiveOp) -> list[onnx.FunctionProto]:
    """FunctionProtos (lowering first, then helpers) that make ``op`` runnable with standard ops.

    The protos carry no ``value_info``: onnxscript types a plain ``FLOAT`` annotation as a *rank-0*
    tensor, and the lowerings are polymorphic in rank and float type (fp16 exports), so declared types
    would be wrong claims that ONNX shape inference (and optimizers built on it, such as onnxscript's
    ``optimize_for_ort``) trust after inlining. Untyped functions are what ONNX Runtime and TensorRT
    inline anyway.
    """
    protos = [fn.to_function_proto() for fn in (op.lowering, *op.helpers)]
    for proto in protos:
        del proto.value_info[:]
    return protos


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Add the lowering of every ``avit`` node used in ``model`` as a model-local function.

    Sets the ``avit`` opset import. Leaves a model without ``avit`` nodes unchanged.

    Returns:
        The ``op_type`` of every adaptive op found, sorted.

    Raises:
        KeyError: a node of domain ``avit`` names no registered op.
    """
    used = sorted({n.op_type for n in model.graph.node if n.domain == AVIT_DOMAIN})
    if not used:
        return used
    have = {(f.domain, f.name) for f in model.functions}
    for name in used:
        op = _REGISTRY[name]
        for fn in lowering_functions(op):
            if (fn.domain, fn.name) not in have:
                model.functions.append(fn)
                have.add((fn.domain, fn.name))
    imports = {o.domain: o for o in model.opset_import}
    if AVIT_DOMAIN not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(AVIT_DOMAIN, AVIT_OPSET_VERSION))
    return used


def single_op_model(op_name: str, input_ranks: dict[str, tuple[int, int]], **attributes) -> onnx.ModelProto:
    """A one-node ONNX model running adaptive op ``op_name`` through its standard-op lowering.

    Used to test and micro-benchmark a lowering in isolation (ONNX Runtime, Polygraphy, trtexec).

    Args:
        op_name: ONNX op_type, e.g. ``"AvitEntropySelect"``.
        input_ranks: ``{input name: (onnx elem type, rank)}`` in schema order; every dim is dynamic.
        **attributes: node attributes (e.g. ``score_mode=1``).

    Raises:
        KeyError: unknown ``op_name``.
    """
    op = _REGISTRY[op_name]
    inputs = [
        onnx.helper.make_tensor_value_info(name, elem, [f"{name}_d{i}" for i in range(rank)])
        for name, (elem, rank) in input_ranks.items()
    ]
    out_names = [p.name for p in op.schema.outputs]
    node = onnx.helper.make_node(
        op_name, list(input_ranks), out_names, domain=AVIT_DOMAIN, **attributes
    )
    first_type = {c.type_param_str: c.allowed_type_strs[0] for c in op.schema.type_constraints}
    elem = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(int64)": onnx.TensorProto.INT64, "tensor(int32)": onnx.TensorProto.INT32}
    outputs = [
        onnx.helper.make_tensor_value_info(p.name, elem[first_type[p.type_str]], [f"{p.name}_d{i}" for i in range(rank)])
        for p, rank in zip(op.schema.outputs, op.output_ranks)
    ]
    graph = onnx.helper.make_graph([node], op_name, inputs, outputs)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)], ir_version=9
    )
    attach_functions(model)
    return model
