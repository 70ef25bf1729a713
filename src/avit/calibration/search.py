"""Search the per-pause-point thresholds for the best quality that meets a latency target.

The search is backend-agnostic: it calls an injected ``evaluate(thresholds) -> Measurement`` (the real
one, :class:`~avit.calibration.evaluate.BackendEvaluator`, runs the model; tests inject deterministic
functions). It works on aggressiveness vectors ``u ∈ [0, 1]^P`` (:class:`~avit.evaluation.knobs.KnobSpace`)
and exploits that latency and quality both fall as any ``u_p`` rises:

1. **Anchors**: ``u = 0`` (nothing paused, the quality reference), ``u = 1`` (everything paused: the
   fastest the model can be; if even that misses the target, no setting meets it) and a coarse grid on
   the diagonal ``u = s·(1, …, 1)``, ``s ∈ {0.25, 0.5, 0.75}`` (a first Pareto front and a bracket).
2. **Boundary along a ray** ``u = s·d``: the smallest ``s`` whose latency meets the target, by
   galloping from a hint and then bisection to ``resolution`` (monotone in ``s``, so a bracket always
   holds). Measurements are noisy, so monotonicity is enforced, not assumed: when a reading meets the
   target at some ``s`` but one at a larger ``s`` misses it, both are measured again (once each; the real
   evaluator then pools the samples) and the bracket is rebuilt; what contradiction is left is settled by
   an isotonic (non-increasing) fit of the ray's latencies: a point counts as meeting the target only if
   the fit does. The boundary is always a *measured* point, never an interpolation.
3. **Per pause point**: rays in other directions ``d ∝ w`` (``w`` on the simplex) trade aggressiveness
   between pause points at equal latency; a hill climb over ``w`` (move ``ε`` of weight from one pause
   point to another, keep the best boundary quality, halve ``ε`` when nothing improves) finds the
   direction whose boundary point has the best quality.

Every evaluation is cached by ``u``; the search stops early when ``max_evals`` is reached and returns the
best found so far.

4. **Preset probes** (optional, ``floors``): quality is deterministic, so for each quality floor a
   bisection along the diagonal finds the most aggressive setting whose quality stays above it, with
   quick measurements (the evaluator's ``timed=False``: one pass, no timing repeats). The search near
   the latency target says nothing about settings with, say, 99 % agreement; these points give the
   presets something to choose from.
4b. **Anchors and ladder for serving under an SLO** (optional, ``anchors`` / ``ladder``): settings the
   caller names (the model's default thresholds) are timed with the first anchors; then, for each
   fraction in ``ladder`` (of the tokens still active, averaged over the pause points), a quick bisection
   along the diagonal finds the setting that keeps about that fraction, and it is timed. The front the
   file records then spans the knob's whole range in roughly even steps of compute, whatever the
   latency target (:mod:`avit.runtime.slo` picks among them per batch). Neither counts against
   ``max_evals``.
5. **Final choice** (:func:`avit.calibration.choice.select_final`, after the search): boundary points sit right at the target by construction, so a
   re-measurement puts about half of them over it. The final choice therefore walks down the Pareto
   front: it re-measures (interleaved) the best-quality front points whose quick latency is within a
   small slack of the target, a few at a time, and stops once one meets the target and no better
   candidate is left; only re-measured numbers decide.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from avit.evaluation.knobs import KnobSpace
from avit.evaluation.latency import latency_stats, percentile


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One threshold setting measured on the calibration images.

    Attributes:
        thresholds: ``[P]`` pause thresholds (or keep ratios).
        samples_ms: Wall time of each backend call (one batch each), ms.
        quality: Agreement with the reference (or metric against labels); higher is better.
        tokens_kept: Mean active tokens after each pause point, over the images.
        knobs: Aggressiveness ``u`` of the thresholds (set by the search).
        remeasured: True once re-measured in the interleaved final run.
    """

    thresholds: tuple[float, ...]
    samples_ms: tuple[float, ...]
    quality: float
    tokens_kept: tuple[float, ...] = ()
    knobs: tuple[float, ...] = ()
    remeasured: bool = False

    def latency(self, q: float) -> float:
        """``q``-th percentile of the per-call latency, ms."""
        return percentile(self.samples_ms, q)

    def stats(self, extra: Sequence[float] = ()) -> dict[str, float]:
        """mean / percentiles / n of the per-call latency (see :func:`~avit.evaluation.latency.latency_stats`)."""
        return latency_stats(self.samples_ms, extra)


Evaluate = Callable[[tuple[float, ...]], Measurement]


@dataclasses.dataclass(frozen=True)
class Ray:
    """The boundary found along one direction ``d`` (max component 1)."""

    direction: tuple[float, ...]
    s: float | None  # None: even s = 1 misses the target
    quality: float
    point: Measurement | None


@dataclasses.dataclass
class SearchResult:
    """What :meth:`ThresholdSearch.run` found.

    Attributes:
        points: Every measured setting, in evaluation order (``knobs`` filled in).
        reference: ``u = 0`` (nothing paused).
        fastest: ``u = 1`` (everything paused).
        rays: The boundary of every direction tried, in order.
        best: Best-quality boundary point that meets the target (quick measurements), or None.
        evaluations: Settings measured (cache hits not counted).
        exhausted: True when ``max_evals`` cut the search short.
    """

    points: list[Measurement]
    reference: Measurement
    fastest: Measurement
    rays: list[Ray]
    best: Measurement | None
    evaluations: int
    exhausted: bool


class _OutOfBudget(Exception):
    pass


def isotonic_decreasing(values: Sequence[float]) -> list[float]:
    """Least-squares non-increasing fit of ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out.extend([mean] * int(weight))
    return out


def pareto_front(points: Sequence[Measurement], q: float) -> list[Measurement]:
    """Points not dominated in (lower ``q``-th percentile latency, higher quality), fastest first.

    A point is kept when no other point is at least as fast and at least as good and strictly better in
    one of the two; among exact duplicates the first is kept.
    """
    order = sorted(points, key=lambda m: (m.latency(q), -m.quality))
    front: list[Measurement] = []
    best_quality = -np.inf
    for m in order:
        if m.quality > best_quality:
            front.append(m)
            best_quality = m.quality
    return front


class ThresholdSearch:
    """The search of the module docstring.

    Args:
        evaluate: ``thresholds -> Measurement`` on the calibration images.
        space: Knob space of the model.
        target_ms: Latency target for the ``percentile``-th percentile of one call, ms.
        percentile: Which percentile must meet the target (e.g. 95).
        resolution: Bisection stops when the bracket along a ray is this narrow (in ``s``).
        max_evals: Most settings to measure (cache hits are free).
        coarse: Diagonal grid measured first.
        min_step: Smallest weight move of the per-pause-point hill climb.
        floors: Quality floors (relative to the reference quality) to probe along the diagonal.
        floor_resolution: Bisection resolution (in ``s``) of those probes.
        quick: ``thresholds -> Measurement`` without timing repeats for the probes; default ``evaluate``.
            Probes do not count against ``max_evals``.
        progress: Called as ``progress(evaluations, max_evals, stage)`` after each new measurement.
        anchors: Aggressiveness vectors ``u`` to time besides the search's own (e.g. the model's defaults).
        ladder: Fractions of active tokens (0..1, mean over the pause points) to find along the diagonal and
            time (step 4b).
        ladder_resolution: Bisection resolution (in ``s``) of the ladder.
    """

    def __init__(
        self,
        evaluate: Evaluate,
        space: KnobSpace,
        target_ms: float,
        *,
        percentile: float = 95.0,
        resolution: float = 1 / 64,
        max_evals: int = 40,
        coarse: Sequence[float] = (0.25, 0.5, 0.75),
        min_step: float = 1 / 16,
        floors: Sequence[float] = (),
        floor_resolution: float = 1 / 32,
        quick: Callable[[tuple[float, ...]], Measurement] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        anchors: Sequence[Sequence[float]] = (),
        ladder: Sequence[float] = (),
        ladder_resolution: float = 1 / 64,
    ) -> None:
        if not (target_ms > 0):
            raise ValueError(f"target_ms must be positive, got {target_ms}")
        if not (0 < percentile <= 100):
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        self.evaluate = evaluate
        self.space = space
        self.target_ms = float(target_ms)
        self.percentile = float(percentile)
        self.resolution = float(resolution)
        self.max_evals = int(max_evals)
        self.coarse = tuple(coarse)
        self.min_step = float(min_step)
        self.progress = progress
        self.floors = tuple(floors)
        self.floor_resolution = float(floor_resolution)
        self.anchors = [tuple(float(x) for x in u) for u in anchors]
        self.ladder = tuple(float(f) for f in ladder)
        self.ladder_resolution = float(ladder_resolution)
        self.quick = quick or evaluate
        self.cache: dict[tuple[float, ...], Measurement] = {}
        self._quick_keys: set[tuple[float, ...]] = set()  # cache entries read without timing repeats
        self.evaluations = 0
        self.rechecked: set[tuple[float, ...]] = set()
        self.stage = "anchors"

    # ------------------------------------------------------------------ measuring
    @staticmethod
    def _key(u: Sequence[float]) -> tuple[float, ...]:
        return tuple(round(float(x), 9) for x in u)

    def measure(self, u: Sequence[float]) -> Measurement:
        """Measurement at aggressiveness ``u`` (cached). Raises _OutOfBudget past ``max_evals``."""
        key = self._key(u)
        if key in self.cache:
            return self.cache[key]
        if self.evaluations >= self.max_evals:
            raise _OutOfBudget
        m = self.evaluate(self.space.thresholds(key))
        m = dataclasses.replace(m, knobs=key)
        self.cache[key] = m
        self.evaluations += 1
        if self.progress:
            self.progress(self.evaluations, self.max_evals, self.stage)
        return m

    def recheck(self, u: Sequence[float]) -> Measurement:
        """Measure ``u`` again (once per point; counts as an evaluation) and replace the cached reading."""
        key = self._key(u)
        if key in self.rechecked or key not in self.cache:
            return self.cache[key]
        if self.evaluations >= self.max_evals:
            raise _OutOfBudget
        self.rechecked.add(key)
        m = dataclasses.replace(self.evaluate(self.space.thresholds(key)), knobs=key)
        self.cache[key] = m
        self.evaluations += 1
        if self.progress:
            self.progress(self.evaluations, self.max_evals, self.stage)
        return m

    def _contradictions(self, d: Sequence[float]) -> list[tuple[float, ...]]:
        """Knobs of readings on the ray that break monotonicity and were not re-measured yet."""
        pts = self._on_ray(d)
        out: list[tuple[float, ...]] = []
        for i, (_, a) in enumerate(pts):
            for _, b in pts[i + 1 :]:
                if self.meets(a) and not self.meets(b):
                    out += [k for k in (a.knobs, b.knobs) if k not in self.rechecked and k not in out]
        return out

    def meets(self, m: Measurement) -> bool:
        """The measurement's own percentile meets the target."""
        return m.latency(self.percentile) <= self.target_ms

    def _on_ray(self, d: Sequence[float]) -> list[tuple[float, Measurement]]:
        dv = np.asarray(d, dtype=np.float64)
        out = []
        for key, m in self.cache.items():
            u = np.asarray(key)
            s = float(u.max()) if u.size else 0.0
            if np.allclose(u, s * dv, atol=1e-7):
                out.append((s, m))
        return sorted(out, key=lambda sm: sm[0])

    def _consistent_boundary(self, d: Sequence[float]) -> tuple[float, Measurement] | None:
        """Smallest measured ``s`` on the ray whose isotonic latency fit meets the target."""
        pts = self._on_ray(d)
        fit = isotonic_decreasing([m.latency(self.percentile) for _, m in pts])
        for (s, m), f in zip(pts, fit):
            if f <= self.target_ms:
                return s, m
        return None

    # ------------------------------------------------------------------ one ray
    def boundary(self, d: Sequence[float], hint: float | None = None) -> Ray:
        """Boundary along ``u = s·d`` (``max(d) = 1``): smallest ``s`` meeting the target."""
        d = tuple(float(x) for x in d)
        u = lambda s: [s * x for x in d]  # noqa: E731
        end = self.measure(u(1.0))
        if not self.meets(end):
            found = self._consistent_boundary(d)
            return Ray(d, None, -np.inf, None) if found is None else Ray(d, found[0], found[1].quality, found[1])

        def bracket() -> tuple[float, float]:
            """(largest s missing the target below ``hi``, smallest s meeting it); (1, 1) if none meets it."""
            pts = self._on_ray(d)
            hi = min((s for s, m in pts if self.meets(m)), default=1.0)
            lo = max((s for s, m in pts if s < hi and not self.meets(m)), default=0.0)
            return min(lo, hi), hi

        lo, hi = bracket()
        if hint is not None and lo < hint < hi and hi - lo > self.resolution:
            # gallop outwards from the hint: usually brackets the boundary in 2-3 measurements
            step = 2 * self.resolution
            m = self.measure(u(hint))
            going_down = self.meets(m)
            s = hint
            while True:
                lo, hi = bracket()
                s = s - step if going_down else s + step
                if not (lo < s < hi) or hi - lo <= self.resolution:
                    break
                if self.meets(self.measure(u(s))) != going_down:
                    break
                step *= 2
        while True:
            lo, hi = bracket()
            if hi - lo > self.resolution:
                self.measure(u((lo + hi) / 2))
                continue
            suspects = self._contradictions(d)
            if not suspects:
                break
            for key in suspects:
                self.recheck(key)
        found = self._consistent_boundary(d)
        if found is None:
            return Ray(d, None, -np.inf, None)
        return Ray(d, found[0], found[1].quality, found[1])

    # ------------------------------------------------------------------ whole search
    def run(self) -> SearchResult:
        """Anchors, diagonal boundary, then the per-pause-point hill climb (see module docstring)."""
        p = self.space.num_pause_points
        rays: list[Ray] = []
        exhausted = False
        self.stage = "anchors"
        reference = self.measure([0.0] * p)
        fastest = self.measure([1.0] * p)
        for u in self.anchors:
            self._timed(u)
        try:
            for s in self.coarse:
                self.measure([s] * p)
            if self.meets(reference):
                pass  # nothing paused already meets the target: it is the best quality there is
            elif not self.meets(fastest):
                pass  # even everything paused misses it: no setting meets the target
            else:
                self.stage = "diagonal"
                diag = self.boundary([1.0] * p)
                rays.append(diag)
                if p > 1:
                    self._climb(rays, diag)
        except _OutOfBudget:
            exhausted = True
        self.stage = "preset probes"
        self._probe_floors(reference.quality)
        self.stage = "ladder"
        self._ladder(reference)
        best = None
        if self.meets(reference):
            best = reference
        else:
            candidates = [r for r in rays if r.point is not None]
            if candidates:
                top = max(candidates, key=lambda r: (r.quality, -r.point.latency(self.percentile)))
                best = top.point
        return SearchResult(
            points=list(self.cache.values()),
            reference=reference,
            fastest=fastest,
            rays=rays,
            best=best,
            evaluations=self.evaluations,
            exhausted=exhausted,
        )

    def _timed(self, u: Sequence[float]) -> Measurement:
        """A timed measurement at ``u`` outside the ``max_evals`` budget (replaces a quick reading)."""
        key = self._key(u)
        cached = self.cache.get(key)
        if cached is not None and key not in self._quick_keys:
            return cached
        m = dataclasses.replace(self.evaluate(self.space.thresholds(key)), knobs=key)
        self.cache[key] = m
        self._quick_keys.discard(key)
        if self.progress:
            self.progress(self.evaluations, self.max_evals, self.stage)
        return m

    def _quick(self, u: Sequence[float]) -> Measurement:
        key = self._key(u)
        if key not in self.cache:
            self.cache[key] = dataclasses.replace(self.quick(self.space.thresholds(key)), knobs=key)
            self._quick_keys.add(key)
            if self.progress:
                self.progress(self.evaluations, self.max_evals, self.stage)
        return self.cache[key]

    def _ladder(self, reference: Measurement) -> None:
        """Per fraction of :attr:`ladder`, bisect the diagonal (quick readings) for the setting that keeps
        about that fraction of the tokens, then time it."""
        p = self.space.num_pause_points
        full = float(np.mean(reference.tokens_kept)) if reference.tokens_kept else 0.0
        if full <= 0:
            return

        def kept(m: Measurement) -> float:
            return float(np.mean(m.tokens_kept)) / full

        for fraction in sorted(self.ladder, reverse=True):
            lo, hi = 0.0, 1.0  # kept(lo) >= fraction > kept(hi), by monotonicity (up to content effects)
            while hi - lo > self.ladder_resolution:
                mid = (lo + hi) / 2
                if kept(self._quick([mid] * p)) >= fraction:
                    lo = mid
                else:
                    hi = mid
            best = min((lo, hi), key=lambda s: abs(kept(self._quick([s] * p)) - fraction))
            self._timed([best] * p)

    def _probe_floors(self, reference_quality: float) -> None:
        """Per floor, bisect the diagonal for the largest ``s`` whose quality stays at or above it."""
        p = self.space.num_pause_points
        diag = [1.0] * p
        for floor in sorted(self.floors, reverse=True):
            level = floor * reference_quality - 1e-12
            while True:
                pts = self._on_ray(diag)
                lo = max((s for s, m in pts if m.quality >= level), default=0.0)
                hi = min((s for s, m in pts if s > lo and m.quality < level), default=1.0)
                if hi - lo <= self.floor_resolution:
                    break
                self._quick([(lo + hi) / 2] * p)

    def _climb(self, rays: list[Ray], start: Ray) -> None:
        p = self.space.num_pause_points
        w = np.full(p, 1.0 / p)
        current = start
        tried = {self._key(w)}
        eps = 0.25
        while eps >= self.min_step - 1e-12:
            best_move: tuple[np.ndarray, Ray] | None = None
            for i, j in itertools.permutations(range(p), 2):
                move = min(eps, float(w[j]))
                if move <= 1e-12:
                    continue
                cand = w.copy()
                cand[i] += move
                cand[j] -= move
                key = self._key(cand)
                if key in tried:
                    continue
                tried.add(key)
                self.stage = f"per-pause-point (weights {', '.join(f'{x:.2f}' for x in cand)})"
                d = cand / cand.max()
                hint = current.s if current.s is not None else None
                ray = self.boundary(d, hint=hint)
                rays.append(ray)
                if best_move is None or _better(ray, best_move[1], self.percentile):
                    best_move = (cand, ray)
            if best_move is not None and _better(best_move[1], current, self.percentile):
                w, current = best_move
            else:
                eps /= 2


def _better(a: Ray, b: Ray, q: float) -> bool:
    """Higher boundary quality wins; at equal quality, the faster boundary point."""
    if a.point is None:
        return False
    if b.point is None:
        return True
    if a.quality != b.quality:
        return a.quality > b.quality
    return a.point.latency(q) < b.point.latency(q)
