"""``AdaptiveViT``: a ViT whose tokens pause at pause points and are really removed from the sequence.

Data flow of :meth:`AdaptiveViT.forward` (P pause points, N patch tokens, prefix = CLS/register tokens)::

    images [B,3,H,W] ─ patch_embed + pos_embed ─ blocks[0:k1] ─┐
      pause point 1: head_1(tokens) → logits_1, fill_1          │ all N tokens active
                     grid  = fill_1                             │ (grid: full [B,N,D] token grid)
                     keep_idx, counts = select(logits_1, t_1)   │ avit::AvitEntropySelect / KeepRatioSelect
                     tokens = gather(tokens, keep_idx)          │ avit::AvitTokenGather (real removal)
      blocks[k1:k2] on prefix + active tokens (+ key padding mask when images keep different counts)
      pause point p: grid = scatter(grid, pos, fill_p)          │ avit::AvitTokenScatter
                     select, gather as above
      blocks[kP:depth] ─ grid = scatter(grid, pos, tokens) ─ norm ─ decoder ─ logits [B,C,H,W]

Paused tokens keep the feature written at their last pause point (``fill``: the head's prediction of the
final-block feature, or the pause-point feature itself), so the decoder always sees the full grid.
With ``fill="canvas"`` (DToP), pixels of paused tokens take their head's prediction instead.

Policy ``dtop`` selects with ``avit::AvitClassContextSelect`` (confident tokens exit except the ``dtop_k``
most confident exit candidates of every class; ``dtop_k`` is a forward argument). Policy ``acm`` removes
no token: blocks from the first pause point on have an :class:`~avit.models.acm.AcmMlp` whose learner
levels each run on their own tokens (``avit::AvitScoreSelect`` → gather → learner → gather-add-scatter),
with the pause point's threshold as the gate's error tolerance; ``tokens_kept`` then counts learner
evaluations (token × learner) per image in each pause point's segment of blocks.

Batches: images keep different numbers of tokens; the sequence is padded to the batch maximum and a key
padding mask keeps padding slots out of every real token's attention. Threshold values are a tensor
argument (one per pause point), never a Python constant, so the exported graph keeps them as an input.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

import avit.ops  # noqa: F401  (registers torch.ops.avit.*)
from avit.errors import ConfigError, InputError
from avit.models.acm import AcmMlp
from avit.models.config import AdaptiveViTConfig
from avit.models.heads import LinearDecoder, PauseAdapter, TokenHead, UpConvDecoder, head_to_output_logits
from avit.models.layers import ATTENTION_IMPLS, Block, PatchEmbed


@dataclasses.dataclass
class FullForward:
    """Intermediate results of a forward pass with nothing paused (for training token heads).

    Attributes:
        pause_tokens: Per pause point, patch-token features after its blocks, float ``[B, N, D]``.
        head_logits: Per pause point, token-head logits, float ``[B, N, head_classes]``.
        final_tokens: Patch tokens after the last block, before the final norm, float ``[B, N, D]``.
        logits: Dense logits, float ``[B, num_classes, H, W]``.
    """

    pause_tokens: list[torch.Tensor]
    head_logits: list[torch.Tensor]
    final_tokens: torch.Tensor
    logits: torch.Tensor


class AdaptiveViT(nn.Module):
    """Adaptive ViT backbone + token heads + dense decoder. See the module docstring for the data flow.

    Parameter names follow timm's ``VisionTransformer`` (``cls_token``, ``reg_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.{i}.*``, ``norm``); the adaptive parts are ``pause_heads.{p}.*`` and the
    dense head is ``decoder.*``.

    Args:
        config: The architecture, pause points and policy.
    """

    def __init__(self, config: AdaptiveViTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        d = c.embed_dim
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if c.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, d)) if c.reg_tokens else None
        # Position embedding covers the CLS token (if any) and the patch grid; registers get none.
        self.pos_embed = nn.Parameter(torch.zeros(1, int(c.class_token) + c.num_patches, d))
        self.blocks = nn.ModuleList(
            Block(d, c.num_heads, c.mlp_hidden, c.qkv_bias, c.init_values, c.norm_eps) for _ in range(c.depth)
        )
        if c.policy == "acm" and c.pause_points:  # ACM MLPs (same fc1/fc2 names) from the first pause point on
            for block in self.blocks[c.pause_points[0] :]:
                block.mlp = AcmMlp(d, c.mlp_hidden, c.acm_learners, c.acm_gate_hidden)
        self.norm = nn.LayerNorm(d, eps=c.norm_eps)
        self.pause_heads = nn.ModuleList(
            TokenHead(d, c.head_classes, predict_feature=c.fill == "predict", norm_eps=c.norm_eps)
            for _ in (c.pause_points if c.has_token_heads else ())
        )
        # Pause adapters (zero at nothing paused) after every block from the first pause point on.
        self.pause_adapters = nn.ModuleList(
            PauseAdapter(d, c.pause_adapter_rank)
            for _ in range(c.depth - c.pause_points[0] if c.pause_adapter_rank and c.pause_points else 0)
        )
        if c.decoder == "upconv":
            self.decoder = UpConvDecoder(d, c.decoder_channels, c.num_classes, c.img_size)
        else:
            self.decoder = LinearDecoder(d, c.num_classes, c.img_size)
        self.register_buffer(
            "default_thresholds", torch.tensor(c.thresholds_or_default, dtype=torch.float32), persistent=False
        )
        self.register_buffer("default_dtop_k", torch.tensor(c.dtop_k, dtype=torch.int64), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith(".feature") and ".gate." not in name \
                    and not name.startswith("pause_adapters."):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ helpers
    @property
    def num_pause_points(self) -> int:
        """P, the number of pause points."""
        return len(self.config.pause_points)

    def set_attention_impl(self, impl: str) -> AdaptiveViT:
        """Use ``explicit`` (exportable) or ``sdpa`` (faster eager) attention in every block."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
        for block in self.blocks:
            block.attn.impl = impl
        return self

    def _select(self, head_logits: torch.Tensor, counts: torch.Tensor, value: torch.Tensor, dtop_k: torch.Tensor):
        policy = self.config.policy
        if policy == "keep_ratio":
            return torch.ops.avit.keep_ratio_select(head_logits, counts, value, 0)
        if policy == "dtop":
            return torch.ops.avit.class_context_select(head_logits, counts, value, dtop_k, 1)
        return torch.ops.avit.entropy_select(head_logits, counts, value, 1 if policy == "confidence" else 0)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """float ``[B, C, H, W]`` → float ``[B, prefix + N, D]``: patch embedding, position embedding, prefix."""
        x = self.patch_embed(images)
        b = x.shape[0]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        else:
            x = x + self.pos_embed
        if self.reg_token is not None:
            cls, rest = x[:, : int(self.cls_token is not None)], x[:, int(self.cls_token is not None) :]
            x = torch.cat([cls, self.reg_token.expand(b, -1, -1), rest], dim=1)
        return x

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """float ``[B, N, D]`` (pre-norm) → float ``[B, C, H, W]`` dense logits."""
        h, w = self.config.grid_size
        feats = self.norm(grid).transpose(1, 2).reshape(grid.shape[0], -1, h, w)
        return self.decoder(feats)

    def check_inputs(self, images: torch.Tensor, thresholds: torch.Tensor | None) -> None:
        """Validate images and thresholds.

        Raises:
            InputError: wrong image rank/channels/size, wrong threshold count, NaN thresholds.
        """
        c = self.config
        expected = (c.in_chans, *c.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise InputError(f"images must be [B, {expected[0]}, {expected[1]}, {expected[2]}], got {list(images.shape)}")
        if thresholds is not None:
            if thresholds.ndim != 1 or thresholds.shape[0] != self.num_pause_points:
                raise InputError(
                    f"expected {self.num_pause_points} pause thresholds (one per pause point), got {list(thresholds.shape)}"
                )
            if torch.isnan(thresholds).any():
                raise InputError("pause thresholds must not be NaN")

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor, thresholds: torch.Tensor | None = None, dtop_k: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive inference with real token removal.

        Args:
            images: float32 ``[B, in_chans, H, W]``, normalised with ``config.mean`` / ``config.std``.
            thresholds: float32 ``[P]``: per pause point, the pause threshold (entropy in nats, or
                ``1 - max p``), keep ratio, or ACM error tolerance. None = ``config.default_thresholds``.
            dtop_k: ``dtop`` only: int64 0-d context tokens per class; None = ``config.dtop_k``.

        Returns:
            ``(logits, tokens_kept)``: float32 ``[B, num_classes, H, W]``; int64 ``[B, P]`` active patch
            tokens after each pause point.

        Raises:
            InputError: see :meth:`check_inputs` (checked in eager mode only; the exported graph trusts
            the runtime, which checks the same things).
        """
        if not torch.compiler.is_compiling():
            self.check_inputs(images, thresholds)
            if dtop_k is not None and (dtop_k.ndim != 0 or dtop_k.is_floating_point() or bool(dtop_k < 0)):
                raise InputError(f"dtop_k must be a non-negative 0-d integer tensor, got {dtop_k}")
        if thresholds is None:
            thresholds = self.default_thresholds
        c = self.config
        if c.policy == "acm":
            return self._forward_acm(self.embed(images), thresholds)
        dtop_k = self.default_dtop_k if dtop_k is None else dtop_k
        logits, kept, _ = self.forward_tokens(self.embed(images), thresholds, dtop_k)
        return logits, kept

    def forward_tokens(
        self,
        x: torch.Tensor,
        thresholds: torch.Tensor,
        dtop_k: torch.Tensor,
        first_block: int = 0,
        later_heads: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The token-head policies' forward from block ``first_block`` on: the one pause loop (see the module
        docstring), used by :meth:`forward` (``first_block=0``) and by fine-tuning (from the first pause
        point, with autograd through the gather / scatter ops).

        Args:
            x: float ``[B, prefix + N, D]``: tokens after ``blocks[:first_block]`` (``first_block`` ≤ the
                first pause point; nothing has paused yet).
            thresholds: float32 ``[P]`` pause thresholds; ``dtop_k``: int64 0-d (policy ``dtop``).
            later_heads: If a list, ``(head_logits [B, n_p, head_classes], pos int64 [B, n_p], counts int64
                [B])`` of every pause point after the first is appended to it (its active tokens).

        Returns:
            ``(logits, tokens_kept, grid)``: float ``[B, num_classes, H, W]``; int64 ``[B, P]``; the pre-norm
            ``[B, N, D]`` grid given to the decoder (None without pause points).
        """
        c = self.config
        n_prefix = c.num_prefix_tokens
        b = x.shape[0]
        key_mask = None
        grid = canvas = pos = counts = None
        kept: list[torch.Tensor] = []
        start = first_block
        for p, stop in enumerate(c.pause_points):
            for i in range(start, stop):
                x = self._block(i, x, key_mask, counts)
            start = stop
            prefix, tokens = x[:, :n_prefix], x[:, n_prefix:]
            head_logits, fill = self.pause_heads[p](tokens)
            out_logits = head_to_output_logits(head_logits, c.num_classes) if c.fill == "canvas" else None
            if p == 0:  # every token is active and in grid order: no scatter needed
                grid, canvas = fill, out_logits
                counts = torch.full((b,), c.num_patches, dtype=torch.int64, device=x.device)
                pos = torch.arange(c.num_patches, device=x.device).expand(b, -1)
            else:
                grid = torch.ops.avit.token_scatter(grid, pos, fill, counts)
                if canvas is not None:
                    canvas = torch.ops.avit.token_scatter(canvas, pos, out_logits, counts)
                if later_heads is not None:
                    later_heads.append((head_logits, pos, counts))
            keep_idx, counts = self._select(head_logits, counts, thresholds[p], dtop_k)
            tokens = torch.ops.avit.token_gather(tokens, keep_idx)
            pos = torch.gather(pos, 1, keep_idx)
            x = torch.cat([prefix, tokens], dim=1)
            real = torch.arange(tokens.shape[1], device=x.device)[None, :] < counts[:, None]
            key_mask = torch.cat([real.new_ones(b, n_prefix), real], dim=1)
            kept.append(counts)
        for i in range(start, c.depth):
            x = self._block(i, x, key_mask, counts)
        tokens = x[:, n_prefix:]
        if pos is None:
            return self.decode(tokens), torch.zeros(b, 0, dtype=torch.int64, device=x.device), None
        grid = torch.ops.avit.token_scatter(grid, pos, tokens, counts)
        logits = self.decode(grid)
        if canvas is not None:
            logits = self._blend_canvas(logits, canvas, pos, counts)
        return logits, torch.stack(kept, dim=1), grid

    def _block(self, i: int, x: torch.Tensor, key_mask: torch.Tensor | None, counts: torch.Tensor | None) -> torch.Tensor:
        """Block ``i`` on ``x`` [B, n, D], then its pause adapter (if any) gated by the paused fraction."""
        x = self.blocks[i](x, key_mask)
        if len(self.pause_adapters) and counts is not None and i >= self.config.pause_points[0]:
            x = self.pause_adapters[i - self.config.pause_points[0]](x, 1.0 - counts.to(x.dtype) / self.config.num_patches)
        return x

    def _forward_acm(self, x: torch.Tensor, thresholds: torch.Tensor, first_block: int = 0):
        """Policy ``acm``: dense blocks up to the first pause point, then ACM blocks; segment ``p`` (blocks
        from pause point ``p`` to the next) runs its learners at tolerance ``thresholds[p]``."""
        c = self.config
        b = x.shape[0]
        for block in self.blocks[first_block : c.pause_points[0] if c.pause_points else c.depth]:
            x = block(x)
        kept: list[torch.Tensor] = []
        stops = (*c.pause_points[1:], c.depth)
        for p, (start, stop) in enumerate(zip(c.pause_points, stops)):
            units = torch.zeros(b, dtype=torch.int64, device=x.device)
            for block in self.blocks[max(start, first_block) : stop]:
                x = x + block.ls1(block.attn(block.norm1(x)))
                y, used = block.mlp.forward_adaptive(block.norm2(x), thresholds[p])
                x = x + block.ls2(y)
                units = units + used
            kept.append(units)
        logits = self.decode(x[:, c.num_prefix_tokens :])
        return logits, torch.stack(kept, dim=1) if kept else torch.zeros(b, 0, dtype=torch.int64, device=x.device)

    def _blend_canvas(self, logits, canvas, pos, counts) -> torch.Tensor:
        """DToP canvas: pixels of paused tokens take their head's prediction (bilinear at token edges)."""
        b = logits.shape[0]
        h, w = self.config.grid_size
        active = torch.ops.avit.token_scatter(
            logits.new_zeros(b, self.config.num_patches, 1), pos, logits.new_ones(b, pos.shape[1], 1), counts
        )
        to_img = lambda t: F.interpolate(  # noqa: E731
            t.transpose(1, 2).reshape(b, -1, h, w), size=self.config.img_size, mode="bilinear", align_corners=False
        )
        paused = 1.0 - to_img(active)
        return logits * (1.0 - paused) + to_img(canvas) * paused

    @torch.no_grad()
    def forward_full(self, images: torch.Tensor) -> FullForward:
        """Run every block on every token (nothing paused) and keep what token-head training needs."""
        c = self.config
        x = self.embed(images)
        pause_tokens, head_logits = [], []
        start = 0
        for p, stop in enumerate(c.pause_points):
            for block in self.blocks[start:stop]:
                x = block(x)
            start = stop
            tokens = x[:, c.num_prefix_tokens :]
            pause_tokens.append(tokens)
            if len(self.pause_heads):
                head_logits.append(self.pause_heads[p](tokens)[0])
        for block in self.blocks[start:]:
            x = block(x)
        final = x[:, c.num_prefix_tokens :]
        return FullForward(pause_tokens, head_logits, final, self.decode(final))

    def static_copy(self) -> AdaptiveViT:
        """The same weights with no pause points: the static reference model (heads dropped)."""
        static = AdaptiveViT(self.config.replace(pause_points=(), default_thresholds=(), pause_adapter_rank=0))
        state = {k: v for k, v in self.state_dict().items()
                 if not k.startswith(("pause_heads.", "pause_adapters.")) and ".mlp.gate." not in k}
        static.load_state_dict(state)
        return static.eval()


    def with_policy(self, policy: str, *, fill: str | None = None, **config_overrides) -> AdaptiveViT:
        """The same backbone, token heads and decoder under another token-head policy.

        Switches between the policies that share the token heads — ``entropy`` (PAUMER), ``confidence``,
        ``keep_ratio`` (DynamicViT / Token Cropr) and ``dtop`` (DToP, Tang et al., ICCV 2023: needs
        ``fill="canvas"``, chosen automatically) — without retraining: the heads' class predictions are
        what every one of these policies scores. Default thresholds reset to the new policy's
        nothing-paused value unless ``default_thresholds`` is given in ``config_overrides``. A feature
        predictor (``fill="predict"``) is dropped when the new fill does not use it.

        Raises:
            ConfigError: ``acm`` (no token heads: use :func:`avit.models.acm.acmize`), a model without
                token heads, or an invalid resulting config.
        """
        if policy == "acm" or not self.config.has_token_heads:
            raise ConfigError("with_policy switches between token-head policies; use acmize for 'acm'")
        if fill is None:
            fill = "canvas" if policy == "dtop" else self.config.fill
        if fill == "predict" and self.config.fill != "predict":
            raise ConfigError("fill 'predict' needs a feature predictor this model's heads do not have")
        overrides = {"default_thresholds": (), **config_overrides}
        derived = AdaptiveViT(self.config.replace(policy=policy, fill=fill, **overrides))
        expected = set(derived.state_dict())
        derived.load_state_dict({k: v for k, v in self.state_dict().items() if k in expected})
        return derived.eval()


def nothing_paused(config: AdaptiveViTConfig) -> torch.Tensor:
    """float32 ``[P]`` thresholds at which no token pauses."""
    return torch.full((len(config.pause_points),), config.nothing_paused_value, dtype=torch.float32)


def everything_paused(config: AdaptiveViTConfig) -> torch.Tensor:
    """float32 ``[P]`` thresholds at which every token pauses at the first pause point."""
    return torch.full((len(config.pause_points),), config.everything_paused_value, dtype=torch.float32)
