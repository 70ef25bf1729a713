"""Importers: timm / DToP-mmseg / Token Cropr state dicts, built here in their public key layouts from an
AdaptiveViT, mapped back exactly; position-embedding resampling; one-line errors; ``avit import``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from avit.errors import CheckpointError
from avit.models import load_checkpoint
from avit.models.importers import import_checkpoint, import_state_dict
from conftest import tiny_model

BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def backbone(model) -> dict[str, torch.Tensor]:
    """The model's backbone weights (avit names = timm names), cloned."""
    return {
        k: v.clone() for k, v in model.state_dict().items()
        if not k.startswith(("pause_heads.", "decoder.")) and ".mlp.gate." not in k
    }


def features(model, images) -> torch.Tensor:
    with torch.no_grad():
        full = model.forward_full(images)
    return torch.cat([*full.pause_tokens, full.final_tokens], dim=1)


@pytest.fixture(scope="module")
def square_images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))


# ---------------------------------------------------------------------------------------------- timm
def test_timm_plain_roundtrip_is_exact(images):
    source = tiny_model()
    state = backbone(source)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 32), torch.randn(1000)  # classifier: skipped
    model, report = import_state_dict(
        "timm", state, source_grid=(4, 6), img_size=(64, 96), num_heads=2, pause_points=(1, 3), num_classes=3
    )
    assert model.config.init_values is not None and model.config.class_token and model.config.depth == 4
    assert "head.*" in report.skipped and "decoder" in report.initialised and "pause_heads" in report.initialised
    assert torch.equal(features(model, images), features(source, images))


@pytest.mark.parametrize("embed_class", [True, False], ids=["regs-embedded", "no_embed_class"])
def test_timm_registers_and_pos_embed_layouts(images, embed_class):
    source = tiny_model(reg_tokens=2)
    state = backbone(source)
    cls_pos, patch_pos = state["pos_embed"][:, :1], state["pos_embed"][:, 1:]
    if embed_class:  # timm: pos_embed over [cls, reg, patches]; avit folds the register part into reg_token
        reg_pos = torch.randn(1, 2, 32)
        state["reg_token"] = state["reg_token"] - reg_pos
        state["pos_embed"] = torch.cat([cls_pos, reg_pos, patch_pos], dim=1)
    else:  # no_embed_class (e.g. DINOv2 with registers): patches only, the CLS token unembedded
        state["cls_token"] = state["cls_token"] + cls_pos
        state["pos_embed"] = patch_pos
    model, report = import_state_dict("timm", state, source_grid=(4, 6), img_size=(64, 96), num_heads=2, pause_points=(1, 3))
    assert model.config.reg_tokens == 2
    torch.testing.assert_close(features(model, images), features(source, images), atol=1e-5, rtol=0)


def test_timm_pos_embed_resampled_like_timm(square_images):
    source = tiny_model(img_size=(64, 64))  # 4×4 grid
    state = backbone(source)
    model, report = import_state_dict("timm", state, img_size=(96, 64), num_heads=2, pause_points=(1, 3))
    grid = state["pos_embed"][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 4), mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([state["pos_embed"][:, :1], want.permute(0, 2, 3, 1).reshape(1, 24, 32)], dim=1)
    assert torch.equal(model.pos_embed.detach(), want)
    assert any("4×4 to a 6×4 grid" in n for n in report.notes)
    default, _ = import_state_dict("timm", state, num_heads=2)  # default input size: the source grid
    assert default.config.img_size == (64, 64) and default.config.pause_points == (1, 2)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.update({"blocks.0.attn.q_norm.weight": torch.ones(16)}), "unknown key 'blocks.0.attn.q_norm.weight'"),
        (lambda s: s.pop("blocks.2.mlp.fc2.bias"), "missing weight 'blocks.2.mlp.fc2.bias'"),
        (lambda s: s.update({"blocks.1.mlp.fc1.bias": torch.zeros(7)}), "blocks.1.mlp.fc1.bias has shape [7]"),
        (lambda s: s.pop("patch_embed.proj.weight"), "not a timm VisionTransformer state dict"),
        (lambda s: s.update({"pos_embed": torch.zeros(1, 23, 32)}), "fits no square patch grid"),
    ],
)
def test_timm_errors_are_one_line(edit, message):
    state = backbone(tiny_model(img_size=(64, 64)))
    edit(state)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        import_state_dict("timm", state, num_heads=2)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- mmseg / DToP
def to_mmseg(state: dict[str, torch.Tensor], depth: int, classes: int, aux: int) -> dict[str, torch.Tensor]:
    """An mmseg segmentor state dict in DToP's layout (key names of mmseg's ViT: vit2mmseg.py)."""
    layer = {
        "norm1": "ln1", "norm2": "ln2", "attn.proj": "attn.attn.out_proj", "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1",
    }
    out = {
        "backbone.cls_token": state["cls_token"], "backbone.pos_embed": state["pos_embed"],
        "backbone.patch_embed.projection.weight": state["patch_embed.proj.weight"],
        "backbone.patch_embed.projection.bias": state["patch_embed.proj.bias"],
    }
    for i in range(depth):
        for name in BLOCK_PARAMS:
            for kind in ("weight", "bias"):
                src = state[f"blocks.{i}.{name}.{kind}"]
                if name == "attn.qkv":
                    out[f"backbone.layers.{i}.attn.attn.in_proj_{kind}"] = src
                else:
                    out[f"backbone.layers.{i}.{layer[name]}.{kind}"] = src
    for head in ["decode_head"] + [f"auxiliary_head.{j}" for j in range(aux)]:  # DToP's PruneHead (ATM) keys
        out[f"{head}.q.weight"] = torch.randn(classes, 16)
        out[f"{head}.class_embed.weight"] = torch.randn(2, 16)
        out[f"{head}.input_proj.weight"] = torch.randn(16, 32)
        out[f"{head}.decoder.layers.0.self_attn.in_proj_weight"] = torch.randn(48, 16)
    return out


def test_mmseg_dtop_backbone_maps_exactly(square_images):
    source = tiny_model(img_size=(64, 64), init_values=None, class_token=False)  # DToP: with_cls_token=False
    state = backbone(source)
    # mmseg's pos_embed always has a CLS position, and the checkpoint a cls_token, unused without CLS
    state["pos_embed"] = torch.cat([torch.randn(1, 1, 32), state["pos_embed"]], dim=1)
    state["cls_token"] = torch.randn(1, 1, 32)
    mmseg = {"meta": {"mmseg_version": "1.x"}, "state_dict": to_mmseg(state, depth=4, classes=5, aux=2)}
    model, report = import_state_dict("mmseg-dtop", mmseg, num_heads=2, pause_points=(1, 3))
    cfg = model.config
    assert (cfg.policy, cfg.fill, cfg.dtop_k, cfg.num_classes, cfg.class_token) == ("dtop", "canvas", 5, 5, False)
    assert cfg.default_thresholds == (0.1, 0.1) and cfg.init_values is None
    assert set(report.skipped) == {"decode_head.*", "auxiliary_head.*"} and "norm" in report.initialised
    assert torch.equal(features(model, square_images), features(source, square_images))
    with pytest.raises(CheckpointError, match="2 auxiliary heads for 3 pause points"):
        import_state_dict("mmseg-dtop", mmseg, num_heads=2, pause_points=(1, 2, 3))
    with pytest.raises(CheckpointError, match="give pause_points"):
        import_state_dict("mmseg-dtop", mmseg, num_heads=2)
    bad = dict(mmseg["state_dict"], **{"neck.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown key 'neck.conv.weight'"):
        import_state_dict("mmseg-dtop", bad, num_heads=2, pause_points=(1, 3))
    bad = dict(mmseg["state_dict"], **{"backbone.patch_embed.norm.weight": torch.zeros(32)})
    with pytest.raises(CheckpointError, match="backbone.patch_embed.norm.weight"):
        import_state_dict("mmseg-dtop", bad, num_heads=2, pause_points=(1, 3))


# ---------------------------------------------------------------------------------------------- Token Cropr
def test_cropr_blocks_map_and_pruners_are_recognised(images):
    source = tiny_model(pause_points=(1, 2))  # the pause points the importer derives from the Cropr modules
    state = backbone(source)
    for i in range(2):  # one Cropr module after blocks 0 and 1 (depth 4, LLF)
        for name, shape in {
            "cross_attn.queries": (1, 24, 32), "cross_attn.q.weight": (32, 32), "cross_attn.k.weight": (32, 32),
            "cross_attn.attn_norm.weight": (32,), "cross_attn.mlp_norm.weight": (32,), "cross_attn.mlp.fc1.weight": (128, 32),
            "head.norm.weight": (32,), "head.head.weight": (3, 32),
        }.items():
            state[f"cropr.{i}.{name}"] = torch.randn(shape)
    state["head.weight"] = torch.randn(3, 32)
    model, report = import_state_dict("cropr", {"model": state}, source_grid=(4, 6), img_size=(64, 96), num_heads=2)
    assert model.config.policy == "keep_ratio" and model.config.pause_points == (1, 2)
    assert "cropr.*" in report.skipped and any("2 Cropr modules" in n for n in report.notes)
    assert torch.equal(features(model, images), features(source, images))
    eva = dict(state, **{"blocks.0.attn.q_proj.weight": torch.zeros(32, 32)})  # Cropr's segmentation models (EVA)
    with pytest.raises(CheckpointError, match="unknown key 'blocks.0.attn.q_proj.weight'"):
        import_state_dict("cropr", eva, source_grid=(4, 6), img_size=(64, 96), num_heads=2)


# ---------------------------------------------------------------------------------------------- files, CLI
def test_files_and_cli(tmp_path, square_images):
    source = tiny_model(img_size=(64, 64))
    torch.save({"state_dict": backbone(source)}, tmp_path / "vit.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a PyTorch checkpoint"):
        import_checkpoint("timm", tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout 'vit'"):
        import_checkpoint("vit", tmp_path / "vit.pth")
    (tmp_path / "cfg.json").write_text('{"num_classes": 3, "decoder": "linear"}')
    cli = [sys.executable, "-m", "avit.cli"]
    proc = subprocess.run(
        [*cli, "import", str(tmp_path / "vit.pth"), "-o", str(tmp_path / "m.ckpt"), "--from", "timm", "--num-heads", "2",
         "--pause-points", "1,3", "--policy", "dtop", "--fill", "canvas", "--config", str(tmp_path / "cfg.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    model, meta = load_checkpoint(tmp_path / "m.ckpt")
    assert model.config.policy == "dtop" and model.config.num_classes == 3 and meta["import_report"]["format"] == "timm"
    assert torch.equal(features(model, square_images), features(source, square_images))
    proc = subprocess.run([*cli, "import", str(tmp_path / "junk.pth"), "-o", str(tmp_path / "x.ckpt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "error:" in proc.stderr
