"""The knob space: one *aggressiveness* ``u ∈ [0, 1]`` per pause point, mapped to thresholds.

The search works on ``u`` so that it does not care which way a policy's knob turns: ``u = 0`` is
"nothing pauses" and ``u = 1`` "every token pauses", and raising any ``u_p`` removes tokens (monotone,
up to content effects). Per policy:

* ``entropy``: threshold ``t = u · ln C`` nats (``C`` token-head classes; entropy never exceeds ``ln C``);
* ``confidence``, ``dtop``: ``t = u · (1 - 1/C)`` (``1 - p_max`` never exceeds ``1 - 1/C``);
* ``keep_ratio``: keep ratio ``r = 1 - u``;
* ``acm``: error tolerance ``t = u`` (1 = only the first learner of every MLP).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from avit.errors import InputError
from avit.metadata import ModelInfo


@dataclasses.dataclass(frozen=True)
class KnobSpace:
    """Maps aggressiveness vectors ``u`` to ``pause_thresholds`` and back.

    Attributes:
        policy: ``"entropy"``, ``"confidence"`` or ``"keep_ratio"``.
        num_pause_points: P.
        scale: Threshold at ``u = 1`` (``ln C`` or ``1 - 1/C``; 1 for keep ratios).
    """

    policy: str
    num_pause_points: int
    scale: float

    @classmethod
    def for_model(cls, info: ModelInfo) -> KnobSpace:
        """The knob space of an exported model (from its metadata)."""
        classes = max(int(info.config.get("num_classes", 2)), 2)
        if info.policy == "entropy":
            scale = math.log(classes)
        elif info.policy in ("confidence", "dtop"):
            scale = 1.0 - 1.0 / classes
        elif info.policy in ("keep_ratio", "acm"):
            scale = 1.0
        else:
            raise InputError(f"unknown pause policy {info.policy!r}")
        return cls(info.policy, info.num_pause_points, scale)

    def _check(self, values: Sequence[float], what: str) -> list[float]:
        vals = [float(v) for v in values]
        if len(vals) != self.num_pause_points:
            raise InputError(f"expected {self.num_pause_points} {what}, got {len(vals)}")
        return vals

    def thresholds(self, u: Sequence[float]) -> tuple[float, ...]:
        """``pause_thresholds`` for aggressiveness ``u`` (each clipped to [0, 1])."""
        us = [min(max(x, 0.0), 1.0) for x in self._check(u, "knob values")]
        if self.policy == "keep_ratio":
            return tuple(1.0 - x for x in us)
        return tuple(x * self.scale for x in us)

    def knobs(self, thresholds: Sequence[float]) -> tuple[float, ...]:
        """Aggressiveness of given thresholds (inverse of :meth:`thresholds`, clipped to [0, 1])."""
        ts = self._check(thresholds, "thresholds")
        if self.policy == "keep_ratio":
            us = [1.0 - t for t in ts]
        else:
            us = [t / self.scale if math.isfinite(t) else 1.0 for t in ts]
        return tuple(min(max(x, 0.0), 1.0) for x in us)

    @property
    def nothing_paused(self) -> tuple[float, ...]:
        """Thresholds at ``u = 0``."""
        return self.thresholds([0.0] * self.num_pause_points)
