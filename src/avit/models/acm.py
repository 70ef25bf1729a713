"""ACM: an MLP split into learners and a per-token gate (the conversion of a trained MLP: :mod:`avit.adapt.acm`).

Method: Adaptive Computation Modules (Wójcik, Devoto, Pustelnik, Minervini, Scardapane, "Adaptive
Computation Modules: Granular Conditional Computation for Efficient Inference", AAAI 2025,
arXiv:2312.10193): a module is a sequence of *learners* whose outputs add up, and a gate decides per
token how many of them run, so a token's cost follows its difficulty.

avit's ACM MLP (:class:`AcmMlp`) keeps timm's parameters ``fc1`` / ``fc2`` and splits the hidden units
into ``L`` equal slices: learner ``j`` is ``fc2[:, S_j] · GELU(fc1[S_j] · x + b1[S_j])`` (learner 0 also
adds ``b2``), so **running every learner is the original MLP** (up to the order of the float sums). The
gate (``gate.fc1 → GELU → gate.fc2``, ``L - 1`` outputs ``z``) predicts, per token, the relative squared
error that remains after ``j`` learners::

    e_0 = 1,   e_j = Π_{i=1..j} sigmoid(z_i)   (j = 1 .. L-1; decreasing in j by construction)

and, with the runtime tolerance ``τ`` (the model's ``pause_thresholds`` value for the ACM block's
segment), learner ``j`` runs on a token iff ``e_j >= τ`` (``NOT(e_j < τ)``): ``τ = 0`` runs every learner
(the original model), ``τ = 1`` only learner 0, ``τ > 1`` none (the MLP is skipped). At inference each
learner level is real conditional computation: ``avit::AvitScoreSelect`` picks the tokens of level ``j``,
``avit::AvitTokenGather`` takes them out, the learner runs on them alone, and the result is added back
with a gather–add–scatter (``out = scatter(out, idx, gather(out, idx) + y)``, exact because a level's
positions are distinct), so MACs follow the gate.

Departure from the paper, on purpose: ACM's gate classifies the number of learners for one compute
budget chosen at training time; avit's gate predicts the error curve, so the budget is a per-call input
(``τ``) of one exported model. Conversion (:func:`avit.adapt.acm.acmize`): the paper distils new learners and trains the
gate end to end on GPUs; here, on a CPU at small scale, the hidden units of the *trained* MLP are sorted
by importance (``mean |GELU(a_h)| · ||fc2[:, h]||`` on calibration tokens) and cut into ``L`` slices — an
exact re-parametrisation, no learner training — and only the gate is fitted, by regression of
``log e_j`` on the measured per-token relative error after ``j`` learners (made monotone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avit.models.layers import Mlp


class AcmMlp(Mlp):
    """An :class:`~avit.models.layers.Mlp` (same ``fc1`` / ``fc2``) split into ``learners`` slices, plus a gate.

    ``forward`` is the dense MLP (every learner); :meth:`forward_adaptive` runs each learner level on its
    own tokens only. Cost per token: gate ``D·G + G·(L-1)`` MACs, each learner ``2·D·F/L``.
    """

    def __init__(self, dim: int, hidden: int, learners: int, gate_hidden: int) -> None:
        super().__init__(dim, hidden)
        if learners < 2 or hidden % learners:
            raise ValueError(f"hidden {hidden} must split into learners >= 2 equal slices, got {learners}")
        self.learners = learners
        self.learner_width = hidden // learners
        self.gate = Mlp(dim, gate_hidden, learners - 1)

    def remaining_error(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[..., L]``: the gate's predicted relative error ``e_j`` left after ``j`` learners (``e_0 = 1``)."""
        log_e = torch.cumsum(F.logsigmoid(self.gate(x).float()), dim=-1)
        return torch.cat([torch.ones_like(log_e[..., :1]), torch.exp(log_e)], dim=-1)

    def learner(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Output of learner ``j`` (``b2`` included in learner 0): float ``[..., D]``."""
        s = slice(j * self.learner_width, (j + 1) * self.learner_width)
        hidden = self.act(F.linear(x, self.fc1.weight[s], self.fc1.bias[s]))
        return F.linear(hidden, self.fc2.weight[:, s], self.fc2.bias if j == 0 else None)

    def forward_adaptive(self, x: torch.Tensor, tolerance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each learner level on its own tokens (real gathers).

        Args:
            x: float ``[B, n, D]`` MLP input (every slot real).
            tolerance: float 0-d ``τ``: learner ``j`` runs on a token iff ``e_j >= τ``.

        Returns:
            ``(out, units)``: float ``[B, n, D]`` the MLP output (0 where no learner ran); int64 ``[B]``
            learner evaluations per image (token × learner).
        """
        b, n, _ = x.shape
        error = self.remaining_error(x)
        counts = torch.full((b,), n, dtype=torch.int64, device=x.device)
        out = torch.zeros_like(x)
        units = torch.zeros(b, dtype=torch.int64, device=x.device)
        for j in range(self.learners):
            idx, cnt = torch.ops.avit.score_select(error[:, :, j], counts, tolerance)
            y = self.learner(j, torch.ops.avit.token_gather(x, idx))
            out = torch.ops.avit.token_scatter(out, idx, torch.ops.avit.token_gather(out, idx) + y, cnt)
            units = units + cnt
        return out, units

    def learners_per_token(self, x: torch.Tensor, tolerance: float) -> torch.Tensor:
        """int64 ``[...]``: how many learners each token runs at ``tolerance`` (reference of the gate rule)."""
        return (~(self.remaining_error(x) < tolerance)).sum(dim=-1)
