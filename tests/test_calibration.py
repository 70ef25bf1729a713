"""Calibration: search logic on injected latency functions, the real backend, presets, file schema, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from avit.calibration.calibrate import calibrate
from avit.calibration.evaluate import BackendEvaluator
from avit.metadata.calibration import Calibration, load_calibration, save_calibration
from avit.calibration.choice import choose, monotone_presets, pick_presets, quality_warning, select_final
from avit.calibration.search import Measurement, ThresholdSearch, isotonic_decreasing, pareto_front
from avit.evaluation.knobs import KnobSpace
from avit.errors import ArtifactError, InputError
from avit.runtime import AdaptiveSession
from tiny_onnx import photo_dir, tiny_onnx

ENTROPY2 = KnobSpace("entropy", 2, math.log(2))


class Fake:
    """``evaluate`` from functions of the knobs ``u``; counts calls; optional first readings per ``u``."""

    def __init__(self, space, latency, quality, first=None):
        self.space, self.latency, self.quality = space, latency, quality
        self.first = dict(first or {})  # rounded u -> latency returned the first time only
        self.calls = []

    def __call__(self, thresholds):
        u = self.space.knobs(thresholds)
        self.calls.append(u)
        key = tuple(round(x, 6) for x in u)
        ms = self.first.pop(key) if key in self.first else self.latency(u)
        return Measurement(tuple(thresholds), (ms,), self.quality(u), tokens_kept=(24.0 * (1 - u[0]),) * len(u))


def linear(u):
    return 100 - 40 * u[0] - 40 * u[1]


def quality(u):  # pausing at the first point hurts 4x more than at the second
    return 1 - 0.2 * u[0] - 0.05 * u[1]


# ---------------------------------------------------------------------------------------------- search core
def test_search_finds_the_best_per_pause_point_split_exactly():
    fake = Fake(ENTROPY2, linear, quality)
    search = ThresholdSearch(fake, ENTROPY2, 70.0, resolution=1 / 64, max_evals=60)
    result = search.run()
    best = result.best
    # optimum of max Q s.t. L <= 70: spend everything on pause point 2 -> u = (0, 0.75)
    assert best.knobs[0] == 0.0
    assert 0.75 <= best.knobs[1] <= 0.75 + 1 / 64
    assert best.latency(95) <= 70.0
    assert best.quality == pytest.approx(quality(best.knobs))
    assert best.thresholds == pytest.approx(ENTROPY2.thresholds(best.knobs))
    # every setting measured once: the cache answers repeats
    assert len(fake.calls) == result.evaluations == len(set(fake.calls)) <= 60
    # the diagonal boundary (u1 = u2 = 0.375) was beaten
    diag = result.rays[0]
    assert diag.direction == (1.0, 1.0) and 0.375 <= diag.s <= 0.375 + 1 / 64
    assert best.quality > diag.quality


def test_preset_probes_bisect_quality_along_the_diagonal_without_timing():
    fake, quick = Fake(ENTROPY2, linear, quality), Fake(ENTROPY2, linear, quality)
    search = ThresholdSearch(fake, ENTROPY2, 70.0, floors=(0.99, 0.95, 0.9), floor_resolution=1 / 32, quick=quick)
    result = search.run()
    # along the diagonal quality is 1 - 0.25 s: the floors are crossed at s = 0.04, 0.2 and 0.4
    diagonal = [m for m in result.points if m.knobs[0] == m.knobs[1]]
    for edge in (0.04, 0.2, 0.4):  # the last diagonal point above each floor lies within 1/32 of the edge
        last = max(m.knobs[0] for m in diagonal if m.quality >= 1 - 0.25 * edge - 1e-12)
        assert edge - 1 / 32 <= last <= edge, (edge, last)
    assert len(quick.calls) >= 5 and result.evaluations == len(fake.calls)  # probes are not search evaluations
    work = lambda m: -sum(m.knobs)  # noqa: E731  (more aggressive = less work)
    presets = pick_presets(diagonal, 95, {"accurate": 0.99, "balanced": 0.95}, cost=work)
    assert presets["accurate"].knobs == (0.03125, 0.03125) and presets["balanced"].knobs == (0.1875, 0.1875)
    # over all points the per-pause-point climb found a better "balanced": everything at pause point 2
    assert pick_presets(result.points, 95, {"balanced": 0.95}, cost=work)["balanced"].knobs[0] == 0.0


def test_search_stops_at_max_evals_with_the_best_so_far():
    fake = Fake(ENTROPY2, linear, quality)
    result = ThresholdSearch(fake, ENTROPY2, 70.0, max_evals=12).run()
    assert result.exhausted and result.evaluations == 12 == len(fake.calls)
    assert result.best is None or result.best.latency(95) <= 70.0


def test_nothing_paused_meeting_the_target_is_chosen():
    result = ThresholdSearch(Fake(ENTROPY2, linear, quality), ENTROPY2, 150.0).run()
    assert result.best is result.reference and result.best.knobs == (0.0, 0.0) and result.rays == []


def test_unreachable_target_has_no_best_and_the_fastest_is_everything_paused():
    result = ThresholdSearch(Fake(ENTROPY2, linear, quality), ENTROPY2, 10.0).run()
    assert result.best is None and result.rays == []
    assert result.fastest.knobs == (1.0, 1.0) and result.fastest.latency(95) == 20.0
    assert choose(result.points, 10.0, 95) is None
    best, again = select_final(result.points, 10.0, 95, lambda ms: ms, always=[result.reference, result.fastest])
    assert best is None and set(again) == {result.reference.thresholds, result.fastest.thresholds}


def test_final_choice_walks_down_the_front_until_a_re_measurement_meets_the_target():
    """Quick readings put four front points under 70 ms; re-measured, the two best are over it."""
    quick = {0.1: 69.0, 0.2: 68.0, 0.3: 65.0, 0.4: 60.0, 1.0: 30.0}
    truth = {0.1: 72.0, 0.2: 71.0, 0.3: 66.0, 0.4: 61.0, 1.0: 31.0, 0.0: 100.0}
    pts = [Measurement((t,), (ms,), 1 - t) for t, ms in quick.items()] + [Measurement((0.0,), (100.0,), 1.0)]
    asked = []

    def remeasure(ms):
        asked.append([m.thresholds[0] for m in ms])
        return [Measurement(m.thresholds, (truth[m.thresholds[0]],), m.quality, remeasured=True) for m in ms]

    ref, fastest = pts[-1], pts[4]
    best, again = select_final(pts, 70.0, 95, remeasure, always=[ref, fastest], group=2)
    assert asked == [[0.0, 1.0, 0.1, 0.2], [0.3, 0.4]]  # 0.1 and 0.2 fail when re-measured
    assert best.thresholds == (0.3,) and best.remeasured and best.latency(95) == 66.0
    # when the first group already holds a passing point better than everything left, nothing more runs
    asked.clear()
    best, _ = select_final(pts, 75.0, 95, remeasure, always=[ref], group=2)
    assert best.thresholds == (0.1,) and asked == [[0.0, 0.1, 0.2]]


def test_contradicting_readings_are_measured_again():
    """One dimension, truth L = 100 - 50 s (boundary s = 0.6 for a 70 ms target). The first readings at
    s = 0.5 (fast, 66) and s = 0.75 (slow, 80) contradict monotonicity; without re-measuring them the
    search would take s = 0.5 (or, by the isotonic fit alone, s = 1)."""
    space = KnobSpace("entropy", 1, 1.0)
    fake = Fake(space, lambda u: 100 - 50 * u[0], lambda u: 1 - u[0], first={(0.5,): 66.0, (0.75,): 80.0})
    result = ThresholdSearch(fake, space, 70.0, resolution=1 / 64).run()
    assert 0.6 <= result.best.knobs[0] <= 0.6 + 1 / 64
    assert fake.calls.count((0.5,)) == 2 and fake.calls.count((0.75,)) == 2


def test_isotonic_fit_settles_what_re_measuring_cannot():
    space = KnobSpace("entropy", 1, 1.0)

    def stubborn(u):  # s = 0.5 always reads fast, s = 0.75 always slow
        return {0.5: 66.0, 0.75: 80.0}.get(round(u[0], 6), 100 - 50 * u[0])

    result = ThresholdSearch(Fake(space, stubborn, lambda u: 1 - u[0]), space, 70.0).run()
    # 66 at 0.5 is contradicted by 80 at 0.75: their pooled fit (73) misses the target, so the first
    # consistent point beyond 0.75 is chosen, never 0.5
    assert result.best.knobs[0] > 0.75 and result.best.latency(95) <= 70.0


def test_keep_ratio_knobs_turn_the_other_way():
    space = KnobSpace("keep_ratio", 2, 1.0)
    fake = Fake(space, linear, quality)
    result = ThresholdSearch(fake, space, 70.0).run()
    assert result.reference.thresholds == (1.0, 1.0) and result.fastest.thresholds == (0.0, 0.0)
    r1, r2 = result.best.thresholds
    assert r1 == 1.0 and 0.25 - 1 / 64 <= r2 <= 0.25  # keep 25 % at the second point, everything at the first


def test_knob_space_round_trip_per_policy():
    for space, u, t in [
        (KnobSpace("entropy", 2, math.log(3)), (0.5, 1.0), (0.5 * math.log(3), math.log(3))),
        (KnobSpace("confidence", 2, 0.5), (0.5, 0.0), (0.25, 0.0)),
        (KnobSpace("keep_ratio", 2, 1.0), (0.25, 1.0), (0.75, 0.0)),
    ]:
        assert space.thresholds(u) == pytest.approx(t)
        assert space.knobs(t) == pytest.approx(u)
    with pytest.raises(InputError, match="expected 2"):
        ENTROPY2.thresholds([0.1])


def test_isotonic_and_pareto_front_exactly():
    assert isotonic_decreasing([5, 3, 4, 1]) == [5, 3.5, 3.5, 1]
    assert isotonic_decreasing([1, 2, 3]) == [2, 2, 2]
    pts = [
        Measurement((0.0,), (50.0,), 1.0),
        Measurement((0.1,), (40.0,), 0.99),
        Measurement((0.2,), (45.0,), 0.95),  # dominated by 0.1 (faster and better)
        Measurement((0.3,), (30.0,), 0.90),
        Measurement((0.4,), (30.0,), 0.80),  # as fast as 0.3 but worse
        Measurement((0.5,), (20.0,), 0.50),
    ]
    front = pareto_front(pts, 95)
    assert [m.thresholds[0] for m in front] == [0.5, 0.3, 0.1, 0.0]
    presets = pick_presets(front, 95, {"accurate": 0.99, "balanced": 0.95, "fast": 0.9, "never": 1.1})
    assert {k: v.thresholds[0] for k, v in presets.items()} == {"accurate": 0.1, "balanced": 0.1, "fast": 0.3}
    assert choose(pts, 35.0, 95).thresholds == (0.3,)
    # with an exact cost (e.g. MACs) instead of the noisy latency, "fast" is the least work above its floor
    work = {0.0: 10, 0.1: 8, 0.2: 9, 0.3: 7, 0.4: 6, 0.5: 5}
    by_work = pick_presets(pts, 95, {"fast": 0.9, "accurate": 0.99}, cost=lambda m: work[m.thresholds[0]])
    assert {k: v.thresholds[0] for k, v in by_work.items()} == {"fast": 0.3, "accurate": 0.1}


def test_presets_are_monotone_in_latency_after_remeasurement():
    """The case seen in a real file: fast (least work) re-measured at 657.6 ms p95, accurate at 653.3 ms."""
    floors = {"accurate": 0.99, "balanced": 0.95, "fast": 0.90}
    accurate = Measurement((0.1,), (653.3,), 0.995)
    balanced = Measurement((0.2,), (640.0,), 0.96)
    fast = Measurement((0.3,), (657.6,), 0.92)
    out, same_as = monotone_presets({"accurate": accurate, "balanced": balanced, "fast": fast}, floors, 95)
    assert list(out) == ["accurate", "balanced", "fast"]
    assert out["fast"] is balanced and same_as == {"fast": "balanced"}
    # a chain: balanced falls back to accurate, and fast (slower than accurate) to accurate too
    out, same_as = monotone_presets({"accurate": Measurement((0.1,), (600.0,), 0.995), "balanced": balanced,
                                     "fast": Measurement((0.3,), (620.0,), 0.92)}, floors, 95)
    assert out["balanced"].thresholds == out["fast"].thresholds == (0.1,)
    assert same_as == {"balanced": "accurate", "fast": "accurate"}
    # random re-measurements: latencies never increase as the floor drops, every preset keeps its floor
    rng = np.random.default_rng(0)
    for _ in range(200):
        picks = {n: Measurement((float(i),), (float(rng.uniform(10, 20)),), f + float(rng.uniform(0, 0.01)))
                 for i, (n, f) in enumerate(floors.items())}
        out, same_as = monotone_presets(picks, floors, 95)
        lat = [out[n].latency(95) for n in ("accurate", "balanced", "fast")]
        assert lat == sorted(lat, reverse=True) and all(out[n].quality >= floors[n] for n in floors)
        assert set(same_as) == {n for n in floors if out[n] is not picks[n]}


def test_quality_warning_for_a_target_below_every_floor():
    floors = {"accurate": 0.99, "fast": 0.90}
    tight = Measurement((2.0, 2.0), (5.0,), 0.41, tokens_kept=(3.0, 0.0))
    text = quality_warning(tight, floors, 1.0, 1024)
    assert "keeps 3, 0 of 1024 tokens" in text and "quality 0.410" in text and "0.9 x reference" in text
    assert quality_warning(Measurement((0.5, 0.5), (9.0,), 0.93, tokens_kept=(600.0, 300.0)), floors, 1.0, 1024) is None
    # relative to the reference's quality when scoring against labels
    assert quality_warning(Measurement((0.5, 0.5), (9.0,), 0.70, tokens_kept=(9.0, 9.0)), floors, 0.75, 1024) is None


# ---------------------------------------------------------------------------------------------- real backend
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = photo_dir(tmp_path_factory.mktemp("calib"), n=8)
    return sorted(folder.glob("*.png"))


def test_evaluator_shares_timing_of_identical_token_selections(model, photos):
    session = AdaptiveSession(model, calibration=False)
    ev = BackendEvaluator(session, session.load_images(photos[:4]), 2, repeats=2)
    a = ev((0.0, 0.0))
    assert a.quality == 1.0 and a.tokens_kept == (24.0, 24.0) and len(a.samples_ms) == 2 * 3
    b = ev((1e-12, 1e-12))  # pauses nothing either: same computation, no timing passes
    assert b.tokens_kept == (24.0, 24.0) and len(b.samples_ms) == 2 * 4 and ev.timed == 1
    q = ev((0.6, 0.6), timed=False)  # quality pass only
    assert q.quality < 1.0 and len(q.samples_ms) == 2 and ev.timed == 1
    c = ev((0.6, 0.6))  # the same selection timed now: its quick pass did not count as timing
    assert c.quality == q.quality and len(c.samples_ms) == 2 * 4 and ev.timed == 2
    again = ev.remeasure([a, c], rounds=2)
    assert [len(m.samples_ms) for m in again] == [4, 4] and all(m.remeasured for m in again)


@pytest.fixture(scope="module")
def calibrated(model, photos, tmp_path_factory):
    """A real calibration whose target nothing paused already meets (deterministic on a noisy machine)."""
    out = tmp_path_factory.mktemp("cal") / "tiny.calib.json"
    report = calibrate(model, 1e6, photos[:6], heldout=photos[6:], batch=2, output=out, plot=out.with_suffix(".png"),
                       max_evals=8, repeats=1, final_rounds=1)
    return report


def test_real_backend_calibration_writes_a_valid_file(calibrated):
    r = calibrated
    assert r.meets_target and r.chosen.thresholds == (0.0, 0.0) and r.chosen.quality == 1.0
    assert r.heldout is not None and r.heldout.passed and len(r.heldout.images) == 2
    assert r.heldout.calibration_reference_ms == r.reference.latency(50)
    assert r.heldout.corrected_ms == pytest.approx(r.heldout.latency_ms / r.heldout.load_factor)
    data = json.loads(r.path.read_text())
    assert data["format"] == "avit-calibration" and data["version"] == 1
    assert data["target"] == {"latency_ms": 1e6, "percentile": 95.0, "batch": 2, "met": True}
    assert set(data["presets"]) == {"target", "accurate", "balanced", "fast"}
    assert any(p["pareto"] for p in data["points"]) and data["chosen"]["meets_target"]
    assert data["heldout"]["load_factor"] == pytest.approx(r.heldout.load_factor)
    assert r.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreachable_target_reports_the_fastest(model, photos, tmp_path):
    r = calibrate(model, 1e-6, photos[:4], heldout=photos[4:6], batch=2, output=tmp_path / "c.json",
                  max_evals=6, repeats=0, final_rounds=1)
    assert not r.meets_target and r.chosen.knobs == (1.0, 1.0) and "target" not in r.presets
    assert not r.heldout.passed and not json.loads(r.path.read_text())["target"]["met"]


def test_presets_round_trip_into_the_session(model, calibrated, tmp_path):
    calib = load_calibration(calibrated.path)
    assert {k: p.thresholds for k, p in calib.presets.items()} == {k: m.thresholds for k, m in calibrated.presets.items()}
    session = AdaptiveSession(model, calibration=calibrated.path)
    assert set(session.presets) == set(calibrated.presets)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    res = session.run(x, preset="fast")
    assert res.preset == "fast" and res.thresholds.tolist() == pytest.approx(list(session.presets["fast"].thresholds))
    with pytest.raises(InputError, match="unknown preset 'nope'; known: accurate, balanced, fast, target"):
        session.run(x, preset="nope")
    with pytest.raises(InputError, match="only one of thresholds, preset and latency_budget_ms"):
        session.run(x, [0.1, 0.1], preset="fast")
    with pytest.raises(InputError, match="only one of"):
        session.run(x, preset="fast", latency_budget_ms=5)
    bare = AdaptiveSession(model, calibration=False)
    with pytest.raises(InputError, match="no presets for tiny.onnx: run .avit calibrate"):
        bare.run(x, preset="fast")
    with pytest.raises(InputError, match="needs presets"):
        bare.run(x, latency_budget_ms=10)
    # the sidecar beside the model is loaded automatically
    side = model.with_name("tiny.calib.json")
    side.write_text(calibrated.path.read_text())
    try:
        assert set(AdaptiveSession(model).presets) == set(calibrated.presets)
    finally:
        side.unlink()


def _with_presets(data, presets):
    data = json.loads(json.dumps(data))
    data["presets"] = {
        name: {"thresholds": t, "latency_ms": ms, "percentile": 95.0, "batch": 2, "quality": q, "tokens_kept": [24, 24]}
        for name, (t, ms, q) in presets.items()
    }
    return data


def test_latency_budget_picks_the_best_preset_that_fits(model, calibrated, tmp_path):
    data = _with_presets(calibrated.data, {
        "fast": ([0.6, 0.6], 10.0, 0.90), "balanced": ([0.3, 0.3], 20.0, 0.95), "accurate": ([0.1, 0.1], 40.0, 0.99),
    })
    path = save_calibration(tmp_path / "budget.calib.json", data)
    session = AdaptiveSession(model, calibration=path)
    pick = lambda ms, b: (lambda p, ok: (p.name, ok))(*session.select_preset(ms, b))  # noqa: E731
    assert pick(25, 2) == ("balanced", True)
    assert pick(40, 2) == ("accurate", True)
    assert pick(25, 1) == ("accurate", True)  # 40 ms for 2 images -> 20 ms for 1 (scaled per image)
    assert pick(25, 4) == ("fast", True)  # 10 ms for 2 -> 20 ms for 4
    assert pick(5, 2) == ("fast", False)  # nothing fits: the fastest, flagged
    x = np.zeros((2, 3, 64, 96), np.float32)
    res = session.run(x, latency_budget_ms=25)
    assert res.preset == "balanced" and res.within_budget is True and res.thresholds.tolist() == pytest.approx([0.3, 0.3])
    res = session.run(x, latency_budget_ms=1)
    assert res.preset == "fast" and res.within_budget is False
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InputError, match="positive number"):
            session.run(x, latency_budget_ms=bad)


def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def setp(path, value):
        def f(d):
            *head, last = path
            for k in head:
                d = d[k]
            d[last] = value
        return f

    return [
        (setp(("format",), "other"), "not an avit calibration file"),
        (setp(("version",), 2), "format version 2; this avit reads version 1"),
        (drop("presets"), "missing required field 'presets'"),
        (setp(("presets", "fast", "latency_ms"), -3), "presets.fast.latency_ms: must be > 0, got -3"),
        (setp(("presets", "fast", "thresholds"), [0.1]), "presets.fast.thresholds: expected 2 thresholds"),
        (setp(("presets", "fast", "batch"), 1.5), "presets.fast.batch: must be an integer"),
        (setp(("presets", "bad name!"), {}), "presets.bad name!: field name does not match"),
        (setp(("model", "sha256"), "xyz"), "model.sha256: 'xyz' does not match"),
        (setp(("points",), []), "points: must have at least 1 item"),
        (setp(("points", 0, "latency_ms", "n"), 0), "points[0].latency_ms.n: must be >= 1"),
    ]


@pytest.mark.parametrize("mutate,message", _mutations())
def test_malformed_calibration_files_fail_in_one_line(calibrated, tmp_path, mutate, message):
    data = json.loads(calibrated.path.read_text())
    mutate(data)
    path = tmp_path / "bad.calib.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as exc:
        load_calibration(path)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ArtifactError):  # and nothing invalid is ever written
        save_calibration(tmp_path / "never.json", data)
    assert not (tmp_path / "never.json").exists()


def test_unparsable_and_foreign_calibration_files(model, calibrated, tmp_path):
    bad = tmp_path / "x.calib.json"
    bad.write_text('{"format": "avit-calibration", "version": 1,')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_calibration(bad)
    bad.write_text(calibrated.path.read_text().replace('"latency_ms": 1000000.0', '"latency_ms": NaN', 1))
    with pytest.raises(ArtifactError, match="NaN is not allowed"):
        load_calibration(bad)
    data = json.loads(calibrated.path.read_text())
    data["model"]["sha256"] = "0" * 64
    other = save_calibration(tmp_path / "other.calib.json", data)
    with pytest.raises(ArtifactError, match="different model file"):
        AdaptiveSession(model, calibration=other)
    data["model"]["pause_points"] = [2, 3]
    with pytest.raises(ArtifactError, match="pause points \\[2, 3\\]"):
        AdaptiveSession(model, calibration=Calibration.from_dict(data))


# ---------------------------------------------------------------------------------------------- CLI
def avit(*args):
    return subprocess.run([sys.executable, "-m", "avit.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(proc, pattern, code=1):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert lines[0].startswith("error: ") and pattern in lines[0] and "Traceback" not in proc.stdout + proc.stderr


def test_cli_calibrate_then_run_with_a_preset(model, photos, tmp_path):
    folder = photos[0].parent
    out = tmp_path / "m.calib.json"
    proc = avit("calibrate", model, "--target-latency-ms", "1e6", "--images", folder, "--batch", "2",
                "--max-evals", "5", "--search-rounds", "0", "--final-rounds", "1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "chosen" in proc.stdout and "held-out check on 2 images" in proc.stdout and "PASS" in proc.stdout
    assert out.is_file() and out.with_name("m.calib.png").is_file()
    proc = avit("run", model, photos[0], "--preset", "balanced", "--calibration", out)
    assert proc.returncode == 0 and "preset balanced" in proc.stdout, proc.stderr
    assert "warning" not in proc.stderr
    data = json.loads(out.read_text())
    lat = [data["presets"][n]["latency_ms"] for n in ("accurate", "balanced", "fast") if n in data["presets"]]
    assert lat == sorted(lat, reverse=True), data["presets"]  # a lower floor is never slower
    data["presets"]["balanced"]["warning"] = "it keeps 3 of 24 tokens"
    out.write_text(json.dumps(data))
    proc = avit("run", model, photos[0], "--preset", "balanced", "--calibration", out)
    assert proc.returncode == 0 and "warning: preset balanced: it keeps 3 of 24 tokens" in proc.stderr, proc.stderr
    one_line_error(avit("run", model, photos[0], "--preset", "nope", "--calibration", out), "unknown preset 'nope'")
    one_line_error(avit("run", model, photos[0], "--preset", "fast"), "no presets for tiny.onnx")
    one_line_error(avit("run", model, photos[0], "--preset", "fast", "--thresholds", "0,0"), "not both")
    out.write_text("{}")
    one_line_error(avit("run", model, photos[0], "--preset", "fast", "--calibration", out), "not an avit calibration file")


def test_cli_calibrate_errors(model, tmp_path):
    one_line_error(avit("calibrate", tmp_path / "no.onnx", "--target-latency-ms", "5", "--images", tmp_path), "no images")
    (tmp_path / "a.png").write_bytes(b"")
    one_line_error(avit("calibrate", tmp_path / "no.onnx", "--target-latency-ms", "5", "--images", tmp_path),
                   "give at least 2, or --heldout DIR")
    one_line_error(avit("calibrate", model, "--target-latency-ms", "0"), "must be a positive number")
    one_line_error(avit("calibrate", model), "Missing option '--target-latency-ms'", code=2)


def test_a_calibration_from_another_cpu_type_is_not_auto_loaded(model, calibrated, tmp_path, caplog):
    """The file records the CPU it was measured on; edited to another CPU type (as if copied from an AVX2-only
    machine), it is not loaded beside the model (one log line says why), loaded with a note when named, and a
    version-1 file that records no CPU is loaded as before."""
    import logging
    import shutil

    from avit.metadata.calibration import calibration_path
    from avit.runtime.machine import cpu_record

    data = json.loads(calibrated.path.read_text())
    assert data["backend"]["cpu"] == cpu_record()
    copy = tmp_path / "tiny.onnx"
    shutil.copy(model, copy)
    beside = calibration_path(copy)
    beside.write_text(json.dumps(data))
    assert set(AdaptiveSession(copy).presets) == set(data["presets"])  # the same CPU: loaded

    features = data["backend"]["cpu"]["features"]
    other = {**data["backend"]["cpu"], "model": "AMD EPYC 7B13", "model_number": 1,
             "features": [f for f in features if f == "avx2"] if features != ["avx2"] else ["avx2", "avx512"]}
    beside.write_text(json.dumps({**data, "backend": {**data["backend"], "cpu": other}}))
    with caplog.at_level(logging.WARNING, logger="avit.runtime"):
        session = AdaptiveSession(copy)
    assert not session.presets and session.calibration is None
    assert "not loaded: measured on another CPU (AMD EPYC 7B13 25/1" in session.calibration_note
    assert [r.getMessage() for r in caplog.records] == [session.calibration_note]
    named = AdaptiveSession(copy, calibration=beside)
    assert set(named.presets) == set(data["presets"]) and "its latencies are estimates here" in named.calibration_note

    older = {**data, "backend": {k: v for k, v in data["backend"].items() if k != "cpu"}}
    beside.write_text(json.dumps(older))
    plain = AdaptiveSession(copy)
    assert set(plain.presets) == set(data["presets"]) and plain.calibration_note is None
