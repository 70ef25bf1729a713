"""Serve under a latency SLO by turning the pause-threshold knob per batch (torch-free, no threads, no I/O).

An avit model has one run-time knob that no static model has: its pause thresholds trade quality for
speed per call, over a range the calibration measured (``avit calibrate`` writes the Pareto front from
nothing paused to everything paused). :class:`SloController` uses it the way Brownout (Klein et al.,
ICSE 2014) dims optional work under load, but with one model and one knob instead of the model variants
that Clipper (NSDI 2017) or INFaaS (ATC 2021) switch between:

* **Settings** (:func:`settings_from_calibration`): the calibration's Pareto front in (mean latency,
  quality), best quality first, fastest last; by default the model's own thresholds are the top rung
  (the controller never serves better than the defaults it was exported with, and returns to them when
  load falls).
* **Service times**: the calibration's per-image latency of each setting, corrected by what this
  process measures (:meth:`SloController.observe`): a machine-wide factor (load, thermal state, another
  process on the cores) shared by every setting, and a slower per-setting residual. Timings on small
  machines drift by ±10 % between identical runs, so the running estimate, not one calibration figure,
  decides.
* **Choice per batch** (:meth:`SloController.choose`): the waiting requests are taken earliest deadline
  first (EDF); the highest-quality setting is chosen under which *every* waiting request, served in EDF
  order back to back, finishes ``reserve × SLO`` before its deadline; when none can, the fastest. The
  reserve is what absorbs a Poisson burst that arrives after the decision: without it the queue rides at
  its deadline and the next burst misses. It applies only once the offered load (arrival rate over the
  last ``rate_window_s``) passes ``calm`` of the top setting's capacity, ramping in up to full load;
  below that, a burst drains by itself, so the next batch may keep the defaults as long as the rest of
  the queue could still make it at the fastest setting (``benchmarks/serving_slo.py`` measures the trade).
  Each request's cost is its model time plus the measured work outside the model (decoding, answering),
  which on a small CPU competes with the model for the same cores.
* **Admission** (:meth:`SloController.admit`): a new request is refused only when even the fastest
  setting cannot finish it, behind the work already admitted, within the SLO (with one spread of the
  measured call times as margin).

Times are seconds of an injectable monotonic ``clock`` (tests pass a fake one); durations in the API are
milliseconds, as everywhere in avit.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from avit.errors import InputError
from avit.metadata.calibration import Calibration


@dataclasses.dataclass(frozen=True)
class Setting:
    """One threshold setting the controller may use.

    Attributes:
        thresholds: ``[P]`` pause thresholds (nats for entropy heads) or keep ratios.
        latency_ms: Calibrated wall time of one call of ``batch`` images, ms (mean over the calibration runs).
        batch: Images per call of that measurement.
        quality: Agreement with the reference on the calibration images (1.0 = identical), higher is better.
        tokens_kept: Mean patch tokens still active after each pause point, ``[P]``.
        name: A label for logs and metrics (``"defaults"``, a preset name, or the thresholds).
    """

    thresholds: tuple[float, ...]
    latency_ms: float
    batch: int = 1
    quality: float = 1.0
    tokens_kept: tuple[float, ...] = ()
    name: str = ""

    @property
    def per_image_ms(self) -> float:
        """Calibrated model time per image, ms (on the CPU a call's cost is close to linear in its images)."""
        return self.latency_ms / self.batch

    @property
    def label(self) -> str:
        """``name`` or the thresholds as ``"0.42,0.6"``."""
        return self.name or ",".join(f"{t:g}" for t in self.thresholds)


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A request waiting for its model call, as the controller sees it.

    Attributes:
        deadline: Clock time (s) by which its answer is due (admission + SLO).
        images: Images it carries.
        setting: Index of the setting it must run at (a request that asked for a preset or thresholds
            and matches a setting), -1 for a fixed knob that matches none (estimated at the slowest
            setting), None to let the controller choose.
    """

    deadline: float
    images: int = 1
    setting: int | None = None


@dataclasses.dataclass(frozen=True)
class Choice:
    """What :meth:`SloController.choose` decided for the next call.

    Attributes:
        index: Index into :attr:`SloController.settings`.
        feasible: False when no setting lets every waiting request finish within its deadline (the
            fastest was taken).
        predicted_ms: Predicted model time of the whole waiting queue at that setting, ms.
    """

    index: int
    feasible: bool
    predicted_ms: float


def settings_from_calibration(
    calibration: Calibration,
    defaults: Sequence[float] | None = None,
    *,
    ceiling: str = "defaults",
) -> list[Setting]:
    """The calibration's Pareto front as controller settings, best quality first, fastest last.

    Every measured point of the file (``points``, plus its presets) is a candidate; the front keeps
    those that no other point beats in both mean latency and quality.

    Args:
        calibration: A loaded calibration file (``avit calibrate``).
        defaults: The model's default thresholds ``[P]``.
        ceiling: ``"defaults"``: the defaults are the best setting (points of higher quality *and* higher
            latency than the defaults are dropped; when the calibration did not measure the defaults, the
            front point closest to them in thresholds stands in); ``"front"``: the whole front, up to
            nothing paused.

    Returns:
        Settings sorted by decreasing quality (and increasing speed).

    Raises:
        InputError: ``ceiling`` unknown, ``defaults`` needed but missing, or fewer than one point.
    """
    if ceiling not in ("defaults", "front"):
        raise InputError(f"ceiling must be 'defaults' or 'front', got {ceiling!r}")
    batch = int(calibration.data["measurement"]["batch"])
    candidates: dict[tuple[float, ...], Setting] = {}
    for point in calibration.data["points"]:
        t = tuple(float(v) for v in point["thresholds"])
        candidates[t] = Setting(t, float(point["latency_ms"]["mean"]), batch, float(point["quality"]),
                                tuple(float(k) for k in point["tokens_kept"]))
    names = {p.thresholds: name for name, p in sorted(calibration.presets.items())}
    if not candidates:
        raise InputError("the calibration has no measured settings")
    front = pareto_settings(list(candidates.values()))
    if ceiling == "defaults":
        if defaults is None:
            raise InputError("ceiling='defaults' needs the model's default thresholds")
        d = tuple(float(v) for v in defaults)
        top = next((c for t, c in candidates.items() if _same(t, d)), None)
        if top is None:  # not measured: the front point nearest to the defaults stands in
            top = min(front, key=lambda s: sum((a - b) ** 2 for a, b in zip(s.thresholds, d)))
        else:
            names[top.thresholds] = "defaults"
        front = [top] + [s for s in front if s.latency_ms < top.latency_ms and s.quality < top.quality]
    return [dataclasses.replace(s, name=names.get(s.thresholds, "")) for s in front]


def slo_ladder(calibration: Calibration, defaults: Sequence[float], slo_ms: float) -> tuple[list[Setting], float]:
    """The settings an SLO controller serves with, and the SLO as a float (ms), after checking it can be met.

    Args:
        calibration: The model's calibration on the backend it runs on.
        defaults: The model's default thresholds ``[P]`` (the top rung).
        slo_ms: Latency objective from admission to answer, ms.

    Raises:
        InputError: ``slo_ms`` not a positive finite number, or below the fastest setting's calibrated latency
            of one image (no setting can meet it).
    """
    slo = _positive_ms(slo_ms, "slo_ms")
    settings = settings_from_calibration(calibration, defaults)
    fastest = min(s.per_image_ms for s in settings)
    if slo < fastest:
        raise InputError(
            f"an SLO of {slo:g} ms is below the fastest setting's calibrated latency ({fastest:.1f} ms per image): "
            "no setting can meet it"
        )
    return settings, slo


def pareto_settings(settings: Sequence[Setting]) -> list[Setting]:
    """Settings not dominated in (lower per-image latency, higher quality), best quality first."""
    order = sorted(settings, key=lambda s: (s.per_image_ms, -s.quality))
    front: list[Setting] = []
    best = -math.inf
    for s in order:
        if s.quality > best:
            front.append(s)
            best = s.quality
    return front[::-1]


class ServiceTimes:
    """Running per-image model time of each setting: calibration × machine factor × per-setting residual.

    An observation ``x = measured / calibrated`` (per image) moves the shared machine factor ``g`` by
    ``alpha`` and the setting's residual ``r_i`` by ``alpha_setting`` (both in log space, so a 10 % slower
    and a 10 % faster call cancel); the estimate is ``calibrated_i × g × r_i``. The shared factor carries
    what one setting learns (the machine got slower) to the settings not used lately.

    Args:
        settings: The settings, with their calibrated latencies.
        alpha: Step of the machine factor per observation (0..1].
        alpha_setting: Step of a setting's residual per observation of that setting (0..1].

    Raises:
        InputError: no settings, or a step outside (0, 1].
    """

    def __init__(self, settings: Sequence[Setting], *, alpha: float = 0.2, alpha_setting: float = 0.05) -> None:
        if not settings:
            raise InputError("the SLO controller needs at least one setting")
        for name, a in (("alpha", alpha), ("alpha_setting", alpha_setting)):
            if not 0 < float(a) <= 1:
                raise InputError(f"{name} must lie in (0, 1], got {a}")
        self.calibrated = [s.per_image_ms for s in settings]
        self.alpha, self.alpha_setting = float(alpha), float(alpha_setting)
        self.log_factor = 0.0
        self.log_var = 0.0
        self.log_residual = [0.0] * len(settings)
        self.observations = [0] * len(settings)

    @property
    def factor(self) -> float:
        """Measured / calibrated model time of this machine lately (1.0: as calibrated)."""
        return math.exp(self.log_factor)

    @property
    def spread(self) -> float:
        """Standard deviation of log(measured / estimated) per call lately (0.1 ≈ ±10 %)."""
        return math.sqrt(self.log_var)

    def per_image_ms(self, index: int) -> float:
        """Estimated model time per image of setting ``index``, ms."""
        return self.calibrated[index] * math.exp(self.log_factor + self.log_residual[index])

    def observe(self, index: int, images: int, model_ms: float) -> None:
        """A call of ``images`` images at setting ``index`` took ``model_ms`` (non-positive values are ignored)."""
        if images < 1 or not model_ms > 0 or not math.isfinite(model_ms):
            return
        error = math.log(model_ms / images / self.calibrated[index]) - self.log_factor - self.log_residual[index]
        self.log_factor += self.alpha * error
        self.log_var += self.alpha_setting * (error * error - self.log_var)
        self.log_residual[index] += self.alpha_setting * error
        self.observations[index] += 1


class SloController:
    """Choose the pause-threshold setting of each batch so that admitted requests meet a latency SLO.

    The method (module docstring): EDF over the waiting requests; the best-quality setting under which
    all of them finish ``reserve × slo_ms`` ahead of their deadlines, else the fastest; admission only
    when the fastest setting can still finish a new request in time.

    Args:
        settings: Best quality first, fastest last (:func:`settings_from_calibration`).
        slo_ms: Latency objective from admission to answer, ms.
        reserve: Fraction of the SLO kept free for bursts when choosing a setting (0 ≤ reserve < 1).
            Admission ignores it: a request is refused only when it cannot make the SLO itself.
        workers: Model calls that run at the same time (the batcher's runner threads); the waiting work
            is shared among them.
        clock: Monotonic clock in seconds (``time.perf_counter``; tests inject a fake one).
        alpha, alpha_setting: Steps of the running service-time estimate (:class:`ServiceTimes`).
        rate_window_s: The arrival rate is counted over this many seconds (admitted or not).
        calm: Utilisation (arrival rate × the top setting's time per request, per worker) below which no
            reserve is kept and a batch may run better than the rest of the queue (a burst at low load
            drains by itself); the reserve ramps in linearly up to utilisation 1.

    Thread-safe: the batcher's runners and the service's admission call it concurrently.

    Raises:
        InputError: no settings, ``slo_ms`` not a positive finite number, ``reserve`` outside [0, 1),
            ``workers`` < 1, or settings not ordered best quality first.
    """

    def __init__(
        self,
        settings: Sequence[Setting],
        slo_ms: float,
        *,
        reserve: float = 0.3,
        workers: int = 1,
        clock: Callable[[], float] = time.perf_counter,
        alpha: float = 0.2,
        alpha_setting: float = 0.05,
        rate_window_s: float = 30.0,
        calm: float = 0.75,
    ) -> None:
        slo = _positive_ms(slo_ms, "slo_ms")
        if not 0 <= float(reserve) < 1:
            raise InputError(f"reserve must lie in [0, 1), got {reserve}")
        if int(workers) < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.settings = list(settings)
        self.times = ServiceTimes(self.settings, alpha=alpha, alpha_setting=alpha_setting)
        if any(a.quality < b.quality for a, b in zip(self.settings, self.settings[1:])):
            raise InputError("settings must be ordered best quality first (settings_from_calibration does that)")
        self.slo_s = slo / 1e3
        self.reserve = float(reserve)
        self.calm = float(calm)
        self.workers = int(workers)
        self.clock = clock
        self._lock = threading.Lock()
        self._busy_until: list[float] = []  # predicted end of each call in flight
        self._overhead_s = 0.0  # time from admission to answer outside the model call (decode, answer), median
        self._post_s = 0.0  # the part of it after the model call (building the answer), median
        self._outside: deque[tuple[float, float]] = deque(maxlen=32)
        self.fastest = min(range(len(self.settings)), key=lambda i: self.settings[i].per_image_ms)
        self.rate_window_s = float(rate_window_s)
        self._arrivals: deque[float] = deque()

    # ------------------------------------------------------------------ estimates
    def deadline(self, admitted: float | None = None) -> float:
        """Clock time by which a request admitted at ``admitted`` (default: now) must be answered."""
        return (self.clock() if admitted is None else admitted) + self.slo_s

    def _rate(self, now: float) -> float:
        """Offered requests per second over the last ``rate_window_s`` (admitted or not)."""
        while self._arrivals and self._arrivals[0] < now - self.rate_window_s:
            self._arrivals.popleft()
        if len(self._arrivals) < 2:
            return 0.0
        # over at least a quarter of the window: two requests 10 ms apart are not a rate of 200/s
        return len(self._arrivals) / max(now - self._arrivals[0], self.rate_window_s / 4)

    def utilisation(self, now: float | None = None) -> float:
        """Offered load as a fraction of the top setting's capacity: rate × (model + outside time) per request."""
        now = self.clock() if now is None else now
        with self._lock:
            return self._utilisation(now)

    def _utilisation(self, now: float) -> float:
        per_request = self.times.per_image_ms(0) / 1e3 + self._overhead_s
        return self._rate(now) * per_request / self.workers

    def _slack_s(self, now: float) -> float:
        """The reserve in force: none while the offered load is below ``calm`` of the top setting's capacity
        (a burst then drains by itself), the full ``reserve`` from 1.0, linear between."""
        u = self._utilisation(now)
        if self.calm >= 1.0:
            return self.reserve * self.slo_s
        ramp = min(1.0, max(0.0, (u - self.calm) / (1.0 - self.calm)))
        return ramp * self.reserve * self.slo_s

    def per_image_ms(self, index: int) -> float:
        """Running estimate of setting ``index``'s model time per image, ms."""
        with self._lock:
            return self.times.per_image_ms(index)

    def _cost_s(self, w: Waiting, index: int) -> float:
        """Predicted time one waiting request holds the machine: its model time at its setting plus the
        time spent outside the model per request (decoding, answering): on a small CPU that work competes
        with the model for the same cores, so it is counted as serial (a little pessimistic where it is not)."""
        own = w.setting if w.setting is not None else index
        own = 0 if own == -1 else own  # a fixed knob outside the ladder: as slow as the best setting
        return self.times.per_image_ms(own) * w.images / 1e3 + self._overhead_s

    def _backlog_s(self, now: float) -> float:
        """Predicted time until a worker is free, s (0 when one is idle)."""
        ends = sorted(max(0.0, end - now) for end in self._busy_until)
        return ends[0] if len(ends) >= self.workers else 0.0

    def _finishes_in_time(self, waiting: Sequence[Waiting], index: int, now: float, slack_s: float,
                          head: int | None = None, rest: int | None = None) -> tuple[bool, float]:
        """Whether every request of ``waiting`` (EDF order) finishes ``slack_s`` before its deadline when the
        first ``head`` images run at setting ``index`` and the others at ``rest`` (default: all at ``index``)."""
        start = now + self._backlog_s(now)
        total = 0.0
        ok = True
        images = 0
        for w in sorted(waiting, key=lambda w: w.deadline):
            here = index if head is None or images < head else rest
            images += w.images
            total += self._cost_s(w, here) / self.workers
            if start + total + self._post_s > w.deadline - slack_s:
                ok = False
        return ok, total * 1e3

    # ------------------------------------------------------------------ decisions
    def choose(self, waiting: Sequence[Waiting], now: float | None = None, batch: int | None = None) -> Choice:
        """The setting of the next call, given every request now waiting (the next batch included).

        Args:
            waiting: The waiting requests, in any order (EDF is applied here).
            now: Clock time, s (default: the clock).
            batch: Images of the next call (the first ones in EDF order). None: plan the whole queue at one
                setting. Given, the call may run better than the rest of the queue could: the rest is
                planned at the fastest setting (it is decided again when its turn comes).

        Returns:
            :class:`Choice`: the best-quality setting under which every waiting request, served earliest
            deadline first, finishes ``reserve × SLO`` before its deadline (the reserve scales in from
            ``calm`` utilisation); else the fastest (``feasible=False`` when even it misses a deadline).
        """
        now = self.clock() if now is None else now
        with self._lock:
            slack = self._slack_s(now)
            for index in range(len(self.settings)):
                ok, ms = self._finishes_in_time(waiting, index, now, slack)
                if ok:
                    return Choice(index, True, ms)
                if batch is not None:
                    ok, ms = self._finishes_in_time(waiting, index, now, 0.0, head=batch, rest=self.fastest)
                    if ok and self._slack_s(now) == 0.0:
                        return Choice(index, True, ms)
            ok, ms = self._finishes_in_time(waiting, self.fastest, now, 0.0)
            return Choice(self.fastest, ok, ms)

    def admit(self, waiting: Sequence[Waiting], images: int = 1, now: float | None = None) -> bool:
        """Whether a new request of ``images`` images, admitted now, can still be answered within the SLO.

        It is checked at the fastest setting, behind every waiting request (EDF: all have earlier or
        equal deadlines) and the calls in flight, with the measured time outside the model added.
        """
        now = self.clock() if now is None else now
        with self._lock:
            self._arrivals.append(now)
            new = Waiting(now + self.slo_s, images)
            start = now + self._backlog_s(now)
            ahead = sum(self._cost_s(w, self.fastest) for w in waiting if w.deadline <= new.deadline)
            work = (ahead + self._cost_s(new, self.fastest)) / self.workers * math.exp(self.times.spread)
            return start + work + self._post_s <= new.deadline

    def retry_after_s(self, waiting: Sequence[Waiting], now: float | None = None) -> int:
        """Whole seconds until the waiting work is done at the fastest setting (``Retry-After``), at least 1."""
        now = self.clock() if now is None else now
        with self._lock:
            total = self._backlog_s(now) + sum(self._cost_s(w, self.fastest) for w in waiting) / self.workers
        return max(1, math.ceil(total))

    # ------------------------------------------------------------------ feedback
    def started(self, index: int, images: int, now: float | None = None) -> float:
        """A call of ``images`` images at setting ``index`` starts; returns its predicted end (clock time)."""
        now = self.clock() if now is None else now
        with self._lock:
            end = now + self.times.per_image_ms(index) * images / 1e3
            self._busy_until.append(end)
            return end

    def finished(self, index: int, images: int, model_ms: float, predicted_end: float | None = None) -> None:
        """A call started with :meth:`started` ended after ``model_ms``: update the running estimate."""
        with self._lock:
            if predicted_end is not None and predicted_end in self._busy_until:
                self._busy_until.remove(predicted_end)
            self.times.observe(index, images, model_ms)

    def observe(self, index: int, images: int, model_ms: float) -> None:
        """A call of ``images`` images at setting ``index`` took ``model_ms`` (no in-flight bookkeeping)."""
        with self._lock:
            self.times.observe(index, images, model_ms)

    def observe_overhead(self, outside_ms: float, after_ms: float = 0.0) -> None:
        """Time of one answered request spent outside its model call, ms: in total, and after the call.

        ``outside_ms`` is the work per request besides the model (reading and decoding the upload, building
        the answer); ``after_ms`` the part after the model call. The median of the last 32 enters the
        predictions (a median: the first requests of a process are slow while libraries warm up).
        """
        with self._lock:
            if outside_ms >= 0 and after_ms >= 0 and math.isfinite(outside_ms) and math.isfinite(after_ms):
                self._outside.append((outside_ms / 1e3, after_ms / 1e3))
                self._overhead_s = statistics.median(o for o, _ in self._outside)
                self._post_s = statistics.median(a for _, a in self._outside)

    def index_of(self, thresholds: Sequence[float]) -> int | None:
        """Index of the setting with exactly these thresholds, or None."""
        t = tuple(float(v) for v in thresholds)
        return next((i for i, s in enumerate(self.settings) if _same(s.thresholds, t)), None)

    def snapshot(self) -> dict:
        """The settings with their calibrated and current per-image estimates (for ``GET /model``)."""
        with self._lock:
            return {
                "slo_ms": self.slo_s * 1e3,
                "reserve": self.reserve,
                "machine_factor": round(self.times.factor, 4),
                "overhead_ms": round(self._overhead_s * 1e3, 3),
                "settings": [
                    {
                        "name": s.label,
                        "thresholds": list(s.thresholds),
                        "quality": s.quality,
                        "calibrated_ms_per_image": round(s.per_image_ms, 3),
                        "estimated_ms_per_image": round(self.times.per_image_ms(i), 3),
                        "observed_calls": self.times.observations[i],
                    }
                    for i, s in enumerate(self.settings)
                ],
            }


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal thresholds up to float32 rounding (metadata and calibration files store them differently)."""
    return len(a) == len(b) and all(x == y or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b))


def _positive_ms(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number of ms, got {value!r}") from None
    if not (v > 0) or math.isinf(v):
        raise InputError(f"{name} must be a positive number of ms, got {value}")
    return v
