"""After the search: the final choice of a setting and the presets.

* :func:`choose` — best quality whose latency meets the target;
* :func:`select_final` — walks down the Pareto front re-measuring (interleaved) the best candidates near
  the target, so that only re-measured numbers decide (boundary points sit right at the target by
  construction; a re-measurement puts about half of them over it);
* :func:`pick_presets` — the fastest measured setting above each quality floor (:data:`PRESET_FLOORS`);
* :func:`monotone_presets` — after re-measurement, a preset with a lower floor is never slower than one
  with a higher floor (``fast`` ≤ ``balanced`` ≤ ``accurate`` in latency);
* :func:`quality_warning` — a one-line warning when the ``target`` preset buys its latency with output
  quality below every preset floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from avit.calibration.search import Measurement, pareto_front


def choose(points: Sequence[Measurement], target_ms: float, q: float) -> Measurement | None:
    """Best quality among ``points`` whose ``q``-th percentile meets the target (ties: faster); None if none."""
    ok = [m for m in points if m.latency(q) <= target_ms]
    if not ok:
        return None
    return max(ok, key=lambda m: (m.quality, -m.latency(q)))


def select_final(
    points: Sequence[Measurement],
    target_ms: float,
    q: float,
    remeasure: Callable[[list[Measurement]], list[Measurement]],
    *,
    always: Sequence[Measurement] = (),
    group: int = 3,
    slack: float = 0.03,
    max_groups: int = 4,
) -> tuple[Measurement | None, dict[tuple[float, ...], Measurement]]:
    """Walk down the Pareto front, re-measuring, until the best setting that meets the target is known.

    Candidates are the front points whose quick latency is at most ``target · (1 + slack)``, best quality
    first. The first call re-measures ``always`` (e.g. reference, fastest, preset candidates) with the
    first ``group`` candidates; further groups follow while no re-measured setting meets the target or a
    better candidate is left, for at most ``max_groups`` groups.

    Args:
        remeasure: Fresh measurements of the given settings (one interleaved run), same order.

    Returns:
        ``(best, remeasured)``: the best-quality re-measured setting meeting the target (None if none
        did) and every re-measured setting by thresholds.
    """
    front = pareto_front(points, q)
    candidates = [m for m in reversed(front) if m.latency(q) <= target_ms * (1 + slack)]
    done: dict[tuple[float, ...], Measurement] = {}
    pending = list(always)
    best = None
    for g in range(max_groups):
        chunk = candidates[g * group : (g + 1) * group]
        batch: list[Measurement] = []
        for m in [*pending, *chunk]:
            if m.thresholds not in done and all(m.thresholds != b.thresholds for b in batch):
                batch.append(m)
        pending = []
        if batch:
            for m in remeasure(batch):
                done[m.thresholds] = m
        best = choose(list(done.values()), target_ms, q)
        rest = candidates[(g + 1) * group :]
        if not rest or (best is not None and all(c.quality <= best.quality for c in rest)):
            break
    return best, done


#: Default preset quality floors, relative to the reference quality (1.0 for agreement).
PRESET_FLOORS: dict[str, float] = {"accurate": 0.99, "balanced": 0.95, "fast": 0.90}


def pick_presets(
    points: Sequence[Measurement],
    q: float,
    floors: dict[str, float] | None = None,
    reference_quality: float = 1.0,
    cost: Callable[[Measurement], float] | None = None,
) -> dict[str, Measurement]:
    """For each ``name: floor``, the cheapest point whose quality is at least ``floor · reference_quality``.

    Args:
        cost: What "cheapest" means; default the ``q``-th percentile latency. Calibration passes the MACs
            of the tokens kept, which are exact, so that measurement noise cannot pick a setting that does
            more work over one that does less (the chosen presets are then re-measured).

    Names whose floor no point reaches are left out. Ties go to the higher quality.
    """
    cost = cost or (lambda m: m.latency(q))
    out = {}
    for name, floor in (floors or PRESET_FLOORS).items():
        ok = [m for m in points if m.quality >= floor * reference_quality - 1e-12]
        if ok:
            out[name] = min(ok, key=lambda m: (cost(m), -m.quality))
    return out


def monotone_presets(
    presets: dict[str, Measurement], floors: dict[str, float], q: float
) -> tuple[dict[str, Measurement], dict[str, str]]:
    """Make presets monotone in latency: a lower quality floor never buys a slower preset.

    :func:`pick_presets` picks by work (MACs), and the picks are then re-measured; when a lower-floor
    preset's ``q``-th percentile latency is not below that of a preset with a higher floor (measurement
    noise between two settings of nearly equal work), the lower-floor preset takes the higher-floor
    preset's setting: better quality, not slower, and it meets the lower floor too.

    Args:
        presets: Name → re-measured setting, names in ``floors`` (others are returned unchanged).
        floors: Name → quality floor (relative to the reference).
        q: Percentile (0-100] compared.

    Returns:
        ``(presets, same_as)``: the presets in the input order, and for each preset that took another's
        setting the name of that preset.
    """
    order = sorted((n for n in presets if n in floors), key=lambda n: -floors[n])
    out = dict(presets)
    same_as: dict[str, str] = {}
    prev: str | None = None
    for name in order:
        if prev is not None and out[name].latency(q) >= out[prev].latency(q):
            out[name] = out[prev]
            same_as[name] = same_as.get(prev, prev)
        prev = name
    return out, same_as


def quality_warning(
    chosen: Measurement, floors: dict[str, float], reference_quality: float, num_patches: int
) -> str | None:
    """A one-line warning when ``chosen`` (the ``target`` preset) falls below every preset's quality floor.

    Args:
        chosen: The setting that meets the latency target.
        floors: Preset quality floors (relative to ``reference_quality``).
        reference_quality: Quality of the nothing-paused reference.
        num_patches: Tokens per image (the count ``tokens_kept`` is out of).

    Returns:
        None when ``chosen`` keeps at least the lowest floor, else the warning (no trailing period).
    """
    lowest = min(floors.values(), default=0.0)
    if chosen.quality >= lowest * reference_quality - 1e-12:
        return None
    kept = ", ".join(f"{k:.0f}" for k in chosen.tokens_kept)
    return (
        f"it keeps {kept} of {num_patches} tokens and quality {chosen.quality:.3f} (reference "
        f"{reference_quality:.3f}), below the lowest preset floor {lowest:g} x reference: the latency "
        "target is too tight for useful output; a larger target or another preset keeps more"
    )
