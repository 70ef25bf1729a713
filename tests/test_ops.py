"""Each adaptive op's ONNX lowering (run by ONNX Runtime) against its PyTorch reference."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import avit.ops as ops
from avit.ops._registry import single_op_model

F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def select_session(name: str, score_mode: int) -> ort.InferenceSession:
    return session(single_op_model(name, {"logits": (F, 3), "counts": (I64, 1), "value": (F, 0)}, score_mode=score_mode))


def random_logits(b: int, n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, c, generator=g) * 3
    if n > 6:  # exact ties between tokens
        logits[:, 5] = logits[:, 2]
        logits[:, 6] = logits[:, 2]
    return logits


SHAPES = [(1, 1, 2), (2, 7, 3), (3, 0, 4), (1, 64, 5), (4, 33, 2), (2, 1024, 150)]


@pytest.mark.parametrize("name,ref", [("AvitEntropySelect", ops.entropy_select), ("AvitKeepRatioSelect", ops.keep_ratio_select)])
@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_lowering_matches_reference(name, ref, score_mode):
    s = select_session(name, score_mode)
    values = [0.0, 0.05, 0.3, 0.5, 0.9, 1.0, math.inf] if name == "AvitEntropySelect" else [0.0, 0.1, 0.5, 0.77, 1.0, 1.5]
    for i, (b, n, c) in enumerate(SHAPES):
        logits = random_logits(b, n, c, seed=i)
        counts = torch.randint(0, n + 1, (b,), generator=torch.Generator().manual_seed(i))
        for v in values:
            keep_idx, new_counts = ref(logits, counts, torch.tensor(v), score_mode)
            got_idx, got_counts, size = s.run(None, {"logits": logits.numpy(), "counts": counts.numpy(), "value": np.array(v, dtype=np.float32)})
            np.testing.assert_array_equal(got_counts, new_counts.numpy(), err_msg=f"{name} {b, n, c} v={v}")
            np.testing.assert_array_equal(got_idx, keep_idx.numpy(), err_msg=f"{name} {b, n, c} v={v}")
            assert size.dtype == np.int32 and size.shape == () and size == keep_idx.shape[1]


def test_entropy_select_semantics():
    logits = torch.tensor([[[10.0, -10.0], [0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]])  # confident, uniform, mid, mid
    counts = torch.tensor([4])
    ent = ops.token_scores(logits, ops.SCORE_ENTROPY)[0]
    assert ent[1] == pytest.approx(math.log(2), abs=1e-6) and ent[0] < 1e-6
    idx, kept = ops.entropy_select(logits, counts, torch.tensor(0.0), 0)
    assert kept.tolist() == [4] and idx.tolist() == [[0, 1, 2, 3]]  # threshold 0: nothing pauses
    idx, kept = ops.entropy_select(logits, counts, torch.tensor(math.inf), 0)
    assert kept.tolist() == [0] and idx.shape == (1, 0)  # +inf: everything pauses
    assert ent[0] < ent[3] < ent[2] < ent[1]
    idx, kept = ops.entropy_select(logits, counts, torch.tensor(float(ent[3]) + 1e-4), 0)
    assert idx.tolist() == [[1, 2]] and kept.tolist() == [2]  # uncertain tokens kept, in order
    idx, kept = ops.entropy_select(logits, torch.tensor([2]), torch.tensor(0.0), 0)
    assert idx.tolist() == [[0, 1]]  # padding slots are never selected


def test_keep_ratio_semantics_and_ties():
    scores_logits = torch.zeros(2, 6, 2)
    scores_logits[0, :, 0] = torch.tensor([5.0, 0.0, 0.0, 0.0, 3.0, 0.0])  # slots 1,2,3,5 tie at max entropy
    counts = torch.tensor([6, 4])
    idx, kept = ops.keep_ratio_select(scores_logits, counts, torch.tensor(0.5), 0)
    assert kept.tolist() == [3, 2]  # ceil(0.5 * 6), ceil(0.5 * 4)
    assert idx[0].tolist() == [1, 2, 3]  # ties go to the lower slot, output ascending
    assert idx[1].tolist() == [0, 1, 0]  # image 2: all four real slots tie → first two, then padding 0
    for ratio, expect in [(0.0, [0, 0]), (1.0, [6, 4]), (0.01, [1, 1])]:
        assert ops.keep_ratio_select(scores_logits, counts, torch.tensor(ratio), 0)[1].tolist() == expect


def test_gather_and_scatter_lowering():
    gather = session(single_op_model("AvitTokenGather", {"x": (F, 3), "idx": (I64, 2)}))
    scatter = session(single_op_model("AvitTokenScatter", {"dst": (F, 3), "idx": (I64, 2), "src": (F, 3), "counts": (I64, 1)}))
    g = torch.Generator().manual_seed(0)
    for b, n, m, d in [(1, 10, 4, 3), (3, 50, 20, 8), (2, 5, 0, 4), (2, 1024, 700, 384)]:
        x = torch.randn(b, n, d, generator=g)
        idx = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(b)]) if m else torch.zeros(b, 0, dtype=torch.int64)
        counts = torch.randint(0, m + 1, (b,), generator=g)
        src = torch.randn(b, m, d, generator=g)
        np.testing.assert_array_equal(gather.run(None, {"x": x.numpy(), "idx": idx.numpy()})[0], ops.token_gather(x, idx).numpy())
        got = scatter.run(None, {"dst": x.numpy(), "idx": idx.numpy(), "src": src.numpy(), "counts": counts.numpy()})[0]
        ref = ops.token_scatter(x, idx, src, counts)
        np.testing.assert_array_equal(got, ref.numpy())
        # padding slots (j >= counts[b]) never write: those grid rows keep dst
        for bi in range(b):
            untouched = [int(i) for i in idx[bi, counts[bi]:]]
            written = set(idx[bi, : counts[bi]].tolist())
            for pos in untouched:
                if pos not in written:
                    assert torch.equal(ref[bi, pos], x[bi, pos])


@pytest.mark.parametrize(
    "op,args",
    [
        (torch.ops.avit.entropy_select.default, (torch.randn(2, 9, 3), torch.tensor([9, 4]), torch.tensor(0.5), 1)),
        (torch.ops.avit.keep_ratio_select.default, (torch.randn(2, 9, 3), torch.tensor([9, 4]), torch.tensor(0.5), 0)),
        (torch.ops.avit.token_gather.default, (torch.randn(2, 9, 4), torch.tensor([[0, 3], [8, 1]]))),
        (
            torch.ops.avit.token_scatter.default,
            (torch.randn(2, 9, 4), torch.tensor([[0, 3], [8, 1]]), torch.randn(2, 2, 4), torch.tensor([2, 1])),
        ),
    ],
)
def test_fake_kernels_agree_with_reference(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_registry_and_local_functions():
    names = set(ops.registered_ops())
    assert names == {"AvitEntropySelect", "AvitKeepRatioSelect", "AvitTokenGather", "AvitTokenScatter"}
    model = single_op_model("AvitEntropySelect", {"logits": (F, 3), "counts": (I64, 1), "value": (F, 0)})
    funcs = {(f.domain, f.name) for f in model.functions}
    assert ("avit", "AvitEntropySelect") in funcs and ("avit", "AvitCompact") in funcs
    assert any(o.domain == "avit" for o in model.opset_import)


def test_nodes_carry_plugin_attributes(tmp_path):
    """TensorRT's parser picks the plugin (namespace avit) over the local function only with these."""
    from conftest import tiny_model

    from avit.exporter import to_onnx_proto

    proto = to_onnx_proto(tiny_model())
    nodes = [n for n in proto.graph.node if n.domain == "avit"]
    assert nodes
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == ops.PLUGIN_NAMESPACE.encode()
        assert attrs["plugin_version"] == ops.PLUGIN_VERSION.encode()
        if node.op_type == "AvitEntropySelect":
            assert len(node.output) == 3  # keep_idx, new_counts, size tensor
    onnx.checker.check_model(proto, full_check=True)
