"""The parity harness: run a model under test and a reference on the same images at the same pause
thresholds, and compare what they return.

One harness serves every check in avit — the exporter (ONNX Runtime vs PyTorch eager), offline
optimization and int8 quantization (ONNX vs its source ONNX), ``avit validate`` (a TensorRT engine or
any artifact vs its ONNX model) and any further backend:

* a *runner* is any callable ``run(images, thresholds, dtop_k) -> (logits, tokens_kept)`` over float32
  ``[B, C, H, W]`` images, float32 ``[P]`` thresholds (None for a static model) and an optional
  ``dtop_k``, returning float32 logits ``[B, K, H, W]`` and int64 ``tokens_kept`` ``[B, P]``;
* :func:`threshold_settings` is the one generator of the settings to check: nothing paused, the
  model's defaults, everything paused, pausing at the last point only, probed thresholds that no token
  score lies near (so a failure always means a real defect, never float rounding at a threshold), and
  any extra settings;
* :func:`compare` runs both runners over settings × batch sizes and returns :class:`ParityRow` s;
  :func:`failure_message` turns the failing rows into one line.

Logits compare with Polygraphy's element-wise rule (``SimpleCompareFunc``, ``check_error_stat=
"elemwise"``): an element fails when ``|a − r| > atol`` **and** ``|a − r| > rtol · |r|``; ``rtol=0``
is a plain max |Δlogits| ≤ ``atol``. Quantized graphs cannot match to a logit tolerance (two int8
executions of one QDQ graph differ by 0.49 logits on the real model), so they are compared by the
fraction of pixels whose label agrees (``min_agreement``) instead. Token counts must always be equal.

Torch-free: NumPy and the runners the caller passes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from avit.evaluation.metrics import agreement

#: ``run(images, thresholds, dtop_k) -> (logits, tokens_kept)``; see the module docstring.
Runner = Callable[[np.ndarray, "np.ndarray | None", "int | None"], tuple[np.ndarray, np.ndarray]]

#: Smallest gap between neighbouring token scores that a probed threshold may sit in: ONNX Runtime,
#: PyTorch and TensorRT round token scores differently by ~1e-7 (fp32), well below half of it.
DEFAULT_MIN_GAP = 1e-4


@dataclasses.dataclass(frozen=True)
class Setting:
    """One labelled setting to compare at.

    Attributes:
        label: "nothing paused", "default", "everything paused", "middle", …
        thresholds: float32 ``[P]`` pause thresholds (keep ratios, tolerances — whatever the policy's
            knob is); None for a static model.
        dtop_k: The optional ``dtop_k`` input (``dtop`` models); None = the model's default.
    """

    label: str
    thresholds: np.ndarray | None
    dtop_k: int | None = None


@dataclasses.dataclass
class ParityRow:
    """One (setting, batch) comparison.

    Attributes:
        label: The setting's label.
        batch: Images in the batch.
        thresholds: The thresholds fed (empty for a static model).
        max_abs_diff: max |logits − logits_reference| (inf when the shapes differ).
        max_rel_diff: max |Δ| / |reference| (zeros in the reference get 2.2e-16 added, as Polygraphy does).
        mismatches: Logit elements failing both tolerances.
        pixel_agreement: Fraction of output pixels whose label (argmax, or logit > 0 for one class) agrees.
        tokens_kept, tokens_kept_reference: int ``[batch][P]`` of the model under test and the reference.
        ok: Equal token counts and the logits within tolerance (or ``pixel_agreement >= min_agreement``).
        dtop_k: The ``dtop_k`` input fed, None = the model's default.
        engine: ``"polygraphy"`` or ``"numpy"``: which implementation compared the logits.
    """

    label: str
    batch: int
    thresholds: list[float]
    max_abs_diff: float
    max_rel_diff: float
    mismatches: int
    pixel_agreement: float
    tokens_kept: list[list[int]]
    tokens_kept_reference: list[list[int]]
    ok: bool
    dtop_k: int | None = None
    engine: str = "numpy"

    @property
    def tokens_equal(self) -> bool:
        """Same token counts at every pause point of every image."""
        return self.tokens_kept == self.tokens_kept_reference

    def describe(self) -> str:
        """One line: setting, batch, differences, token counts, ok/FAIL."""
        kept = "equal" if self.tokens_equal else f"{self.tokens_kept} vs reference {self.tokens_kept_reference}"
        return (
            f"{self.label:<26} batch {self.batch}: max|Δlogits| {self.max_abs_diff:.2e} (rel {self.max_rel_diff:.2e}), "
            f"pixels agree {100 * self.pixel_agreement:.2f} %, tokens kept {kept}  {'ok' if self.ok else 'FAIL'}"
        )


def session_runner(session) -> Runner:
    """A runner over an :class:`~avit.runtime.AdaptiveSession` (whatever backend it opened)."""

    def run(images: np.ndarray, thresholds: np.ndarray | None, dtop_k: int | None):
        result = session.run(images, None if thresholds is None else np.asarray(thresholds, np.float32), dtop_k=dtop_k)
        return result.logits, result.tokens_kept

    return run


# ---------------------------------------------------------------------------------------------- settings
def probe_stable_threshold(
    run: Runner, info, images: np.ndarray, fraction: float = 0.5, gap: float = DEFAULT_MIN_GAP
) -> np.ndarray | None:
    """A ``[P]`` threshold (one value at every pause point) that pauses about ``fraction`` of the tokens
    and lies at least ``gap`` away from every token score, found by running ``run`` only.

    Token counts are monotone in the threshold, so equal counts at ``t − gap`` and ``t + gap`` prove no
    score lies within ``gap`` of ``t``: rounding differences between two equivalent graphs (~1e-6 in
    the scores) cannot move a token across it. Candidates are the model defaults' mean scaled by
    0.5–8; the stable one pausing closest to ``fraction`` wins (within 0.4 of it stops the search).

    Args:
        run: The reference runner.
        info: The model's :class:`~avit.metadata.ModelInfo`.
        images: float32 ``[B, C, H, W]``.
        fraction: Target fraction of paused tokens, in (0, 1).
        gap: Smallest distance to every score (nats for entropy, probability for confidence).

    Returns:
        float32 ``[P]``, or None for policies without score thresholds (keep ratio, ACM) and when no
        candidate is stable and pauses something.
    """
    if info.policy not in ("entropy", "confidence", "dtop") or not info.num_pause_points:
        return None
    n = info.num_pause_points
    base = float(np.mean(info.default_thresholds)) or 0.25
    lo, hi = sorted((info.nothing_paused, info.everything_paused))
    full = info.num_patches * images.shape[0] * n
    best, best_dist = None, None
    for scale in (1.0, 1.5, 2.0, 2.5, 3.0, 0.75, 3.5, 4.0, 0.5, 5.0, 6.0, 8.0):
        t = base * scale
        if not (lo < t - gap and t + gap < hi):
            continue
        below, above = (run(images, np.full(n, v, np.float32), None)[1] for v in (t - gap, t + gap))
        if not np.array_equal(below, above) or not 0 < above.sum() < full:
            continue
        dist = abs(1 - above.sum() / full - fraction)
        if best_dist is None or dist < best_dist:
            best, best_dist = np.full(n, t, np.float32), dist
        if dist <= 0.4:
            break
    return best


def threshold_settings(
    info,
    *,
    probe: Callable[[float], np.ndarray | None] | None = None,
    default: bool = True,
    last_only: bool = False,
    extra: Sequence[Sequence[float]] = (),
) -> list[Setting]:
    """The settings a parity check runs at, in this order.

    nothing paused, the defaults (``default``), everything paused, pausing at the last pause point only
    (``last_only``), ``probe(0.5)`` as "middle" and ``probe(0.75)`` as "deep" (probes returning None are
    skipped), ``dtop`` models again at "middle" with ``dtop_k`` 0, 1 and all tokens, then ``extra`` as
    "custom 1", … A static model (no pause points) has the single setting "static".

    Args:
        info: The model's :class:`~avit.metadata.ModelInfo`.
        probe: Fraction of tokens to pause → ``[P]`` thresholds no token score lies near (see
            :func:`probe_stable_threshold`; the exporter probes PyTorch's scores directly).
        default, last_only: Include those settings.
        extra: Further ``[P]`` settings.
    """
    n = info.num_pause_points
    if n == 0:
        return [Setting("static", None)]
    nothing = np.full(n, info.nothing_paused, np.float32)
    everything = np.full(n, info.everything_paused, np.float32)
    settings = [Setting("nothing paused", nothing)]
    if default:
        settings.append(Setting("default", np.asarray(info.default_thresholds, np.float32)))
    settings.append(Setting("everything paused", everything))
    if last_only:
        last = nothing.copy()
        last[-1] = everything[-1]
        settings.append(Setting("pause at last point only", last))
    if probe is not None:
        for label, fraction in (("middle", 0.5), ("deep", 0.75)):
            t = probe(fraction)
            if t is not None:
                settings.append(Setting(label, np.asarray(t, np.float32)))
    middle = next((s.thresholds for s in settings if s.label == "middle"), None)
    if info.policy == "dtop" and middle is not None:
        for name, k in (("0", 0), ("1", 1), ("all", info.num_patches)):
            settings.append(Setting(f"middle, dtop_k={name}", middle, k))
    settings += [Setting(f"custom {i + 1}", np.asarray(v, np.float32)) for i, v in enumerate(extra)]
    return settings


# ---------------------------------------------------------------------------------------------- comparing
@dataclasses.dataclass(frozen=True)
class Comparison:
    """Element-wise comparison of two logit arrays (:func:`compare_logits`).

    Attributes:
        ok: No element exceeds both tolerances, the shapes agree and nothing is NaN.
        max_abs_diff: max |a − r| (inf when the shapes differ).
        max_rel_diff: max |a − r| / |r|.
        mismatches: Elements failing both tolerances.
        engine: ``"polygraphy"`` or ``"numpy"``: which implementation decided.
    """

    ok: bool
    max_abs_diff: float
    max_rel_diff: float
    mismatches: int
    engine: str


def _polygraphy_compare(test, ref, atol, rtol):
    try:
        from polygraphy.comparator import IterationResult
        from polygraphy.logger import G_LOGGER

        try:
            from polygraphy.comparator import SimpleCompareFunc

            func = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise")
        except ImportError:  # Polygraphy < 0.50
            from polygraphy.comparator import CompareFunc

            func = CompareFunc.simple(atol=atol, rtol=rtol, check_error_stat="elemwise")
    except ImportError:
        return None
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        result = func(
            IterationResult({"logits": np.asarray(test)}, runner_name="artifact"),
            IterationResult({"logits": np.asarray(ref)}, runner_name="reference"),
        )["logits"]
    mismatches = compare_logits(test, ref, atol, rtol, use_polygraphy=False).mismatches  # Polygraphy reports no count
    return Comparison(bool(result), float(result.max_absdiff), float(result.max_reldiff), mismatches, "polygraphy")


def compare_logits(
    test: np.ndarray, ref: np.ndarray, atol: float, rtol: float = 0.0, use_polygraphy: bool = True
) -> Comparison:
    """Compare float logits ``test`` with the reference ``ref`` element-wise (the module docstring's
    rule); shapes that differ are never ok."""
    if np.shape(test) != np.shape(ref):
        return Comparison(False, math.inf, math.inf, int(np.size(ref)), "numpy")
    if use_polygraphy:
        result = _polygraphy_compare(test, ref, atol, rtol)
        if result is not None:
            return result
    a, r = np.asarray(test, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    absdiff = np.abs(a - r)
    reldiff = absdiff / np.abs(np.where(r == 0, r + 2.220446049250313e-16, r))
    bad = ((absdiff > atol) | np.isnan(absdiff)) & ((reldiff > rtol) | np.isnan(reldiff))
    max_abs = float(absdiff.max()) if absdiff.size else 0.0
    max_rel = float(reldiff.max()) if reldiff.size else 0.0
    mismatches = int(np.count_nonzero(bad))
    return Comparison(mismatches == 0 and math.isfinite(max_abs), max_abs, max_rel, mismatches, "numpy")


def compare(
    run: Runner,
    reference: Runner,
    images: np.ndarray,
    settings: Sequence[Setting],
    batches: Sequence[int] = (1,),
    *,
    atol: float = 1e-4,
    rtol: float = 0.0,
    min_agreement: float | None = None,
    use_polygraphy: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[ParityRow]:
    """Run ``run`` and ``reference`` at every setting and batch size, and compare.

    Args:
        run, reference: Runners of the model under test and of the reference.
        images: float32 ``[n >= max(batches), C, H, W]``; batch ``b`` uses the first ``b`` images.
        settings: From :func:`threshold_settings`.
        batches: Batch sizes.
        atol, rtol: Logit tolerances (module docstring); ``rtol=0``: max |Δlogits| ≤ ``atol``.
        min_agreement: Compare by pixel-label agreement ≥ this instead of the logit tolerances
            (quantized graphs); token counts must still be equal.
        use_polygraphy: Let Polygraphy's comparator decide when it is installed.
        log: Called with :meth:`ParityRow.describe` of each row.

    Returns:
        One :class:`ParityRow` per (setting, batch), settings outermost. Nothing is raised for a
        mismatch: check ``row.ok`` (or :func:`failure_message`).
    """
    rows = []
    for setting in settings:
        for batch in batches:
            x = images[:batch]
            logits, kept = run(x, setting.thresholds, setting.dtop_k)
            want, want_kept = reference(x, setting.thresholds, setting.dtop_k)
            c = compare_logits(logits, want, atol, rtol, use_polygraphy)
            agree = float(agreement(logits, want)["pixel_agreement"]) if np.shape(logits) == np.shape(want) else 0.0
            ok = c.ok if min_agreement is None else agree >= min_agreement
            kept, want_kept = np.asarray(kept).tolist(), np.asarray(want_kept).tolist()
            thresholds = [] if setting.thresholds is None else [float(t) for t in setting.thresholds]
            row = ParityRow(setting.label, batch, thresholds, c.max_abs_diff, c.max_rel_diff, c.mismatches, agree,
                            kept, want_kept, ok and kept == want_kept, setting.dtop_k, c.engine)
            rows.append(row)
            if log is not None:
                log(row.describe())
    return rows


def failure_message(rows: Sequence[ParityRow], *, atol: float, what: str = "parity check") -> str | None:
    """One line describing the first failing row (and how many failed), or None when all are ok."""
    bad = [r for r in rows if not r.ok]
    if not bad:
        return None
    r = bad[0]
    kept = "" if r.tokens_equal else f", tokens kept {r.tokens_kept} vs reference {r.tokens_kept_reference}"
    return (
        f"{what} failed ({len(bad)} of {len(rows)} settings), e.g. batch {r.batch} '{r.label}': "
        f"max|Δlogits| {r.max_abs_diff:.3g} (atol {atol:g}), pixels agree {100 * r.pixel_agreement:.2f} %{kept}"
    )
