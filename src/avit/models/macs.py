"""Multiply-accumulate counts of an adaptive ViT for given numbers of active tokens.

Counts matrix multiplies and convolutions (the work that token removal saves); elementwise ops,
softmax and normalisation are ignored. Units: MACs (divide by 1e9 for GMAC).

Per block with ``n`` tokens (prefix included), width D, MLP hidden F:
``qkv 3nD² + attention 2n²D + proj nD² + mlp 2nDF``, plus ``2nDr`` for a pause adapter of rank r
(blocks from the first pause point on).

Policy ``acm`` removes no token; its ``tokens_kept`` are learner evaluations (token × learner) per pause
point's segment of blocks, each costing ``2·D·F/L``, plus the gate ``D·G + G·(L-1)`` per token and block.
"""

from __future__ import annotations

from collections.abc import Sequence

from avit.models.config import AdaptiveViTConfig


def block_macs(n: int, dim: int, mlp_hidden: int) -> int:
    """MACs of one transformer block on ``n`` tokens."""
    return 4 * n * dim * dim + 2 * n * n * dim + 2 * n * dim * mlp_hidden


def decoder_macs(config: AdaptiveViTConfig) -> int:
    """MACs of the dense decoder (independent of pausing: it always sees the full grid)."""
    h, w = config.grid_size
    if config.decoder == "linear":
        return h * w * config.embed_dim * config.num_classes
    total, cin = 0, config.embed_dim
    for cout in config.decoder_channels:
        total += h * w * cin * cout * 16  # ConvTranspose 4×4 over the input grid
        h, w, cin = 2 * h, 2 * w, cout
    return total + h * w * cin * config.num_classes


def model_macs(config: AdaptiveViTConfig, tokens_kept: Sequence[int] = ()) -> dict[str, int]:
    """MACs of one image whose active patch tokens after each pause point are ``tokens_kept``.

    Args:
        config: The model.
        tokens_kept: One count per pause point (empty or omitted = nothing paused). For a padded
            batch pass the batch maximum to get the MACs actually executed per image.

    Returns:
        ``{"patch_embed", "blocks", "heads", "decoder", "total"}`` in MACs.

    Raises:
        ValueError: ``tokens_kept`` has the wrong length or a count outside ``[0, N]``.
    """
    if config.policy == "acm":
        return _acm_macs(config, tokens_kept)
    n_patch = config.num_patches
    kept = list(tokens_kept) if len(tokens_kept) else [n_patch] * len(config.pause_points)
    if len(kept) != len(config.pause_points) or any(not (0 <= k <= n_patch) for k in kept):
        raise ValueError(f"tokens_kept {kept} must hold {len(config.pause_points)} counts within [0, {n_patch}]")
    d, f, prefix = config.embed_dim, config.mlp_hidden, config.num_prefix_tokens
    adapter = 2 * d * config.pause_adapter_rank if config.pause_points else 0  # per token and block after the first pause point
    active = n_patch
    blocks = heads = 0
    start = 0
    for p, (stop, k) in enumerate(zip(config.pause_points, kept)):
        blocks += (stop - start) * (block_macs(prefix + active, d, f) + (adapter * (prefix + active) if p else 0))
        heads += active * d * (config.head_classes + (d if config.fill == "predict" else 0))
        active, start = k, stop
    blocks += (config.depth - start) * (block_macs(prefix + active, d, f) + adapter * (prefix + active))
    patch_embed = n_patch * d * config.in_chans * config.patch_size**2
    dec = decoder_macs(config)
    return {
        "patch_embed": patch_embed,
        "blocks": blocks,
        "heads": heads,
        "decoder": dec,
        "total": patch_embed + blocks + heads + dec,
    }


def acm_segments(config: AdaptiveViTConfig) -> list[int]:
    """``acm``: number of ACM blocks in each pause point's segment (from it to the next, or the end)."""
    stops = (*config.pause_points[1:], config.depth)
    return [stop - start for start, stop in zip(config.pause_points, stops)]


def _acm_macs(config: AdaptiveViTConfig, units: Sequence[int]) -> dict[str, int]:
    """:func:`model_macs` of policy ``acm``: ``units`` = learner evaluations per segment (empty = all)."""
    d, f, learners = config.embed_dim, config.mlp_hidden, config.acm_learners
    n = config.num_prefix_tokens + config.num_patches
    segments = acm_segments(config)
    full = [blocks * n * learners for blocks in segments]
    used = list(units) if len(units) else full
    if len(used) != len(segments) or any(not (0 <= u <= m) for u, m in zip(used, full)):
        raise ValueError(f"learner evaluations {used} must hold {len(segments)} counts within {full}")
    attention = 4 * n * d * d + 2 * n * n * d
    gate = n * (d * config.acm_gate_hidden + config.acm_gate_hidden * (learners - 1))
    dense_blocks = config.pause_points[0] if config.pause_points else config.depth
    blocks = dense_blocks * block_macs(n, d, f) + sum(segments) * (attention + gate)
    blocks += sum(used) * 2 * d * (f // learners)
    patch_embed = config.num_patches * d * config.in_chans * config.patch_size**2
    dec = decoder_macs(config)
    return {"patch_embed": patch_embed, "blocks": blocks, "heads": 0, "decoder": dec, "total": patch_embed + blocks + dec}
