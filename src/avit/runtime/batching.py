"""Micro-batching of concurrent requests into one :meth:`AdaptiveSession.run` call (torch-free).

The pause thresholds are one graph input **shared by the whole batch** (``pause_thresholds [P]``), so
only requests that use the *same* thresholds (after resolving ``preset=`` / ``latency_budget_ms=``) and
the same image shape can share a call. :class:`MicroBatcher` keeps one queue; a runner thread takes
the oldest waiting request, waits at most ``max_wait_ms`` (counted from that request's arrival) for
more requests with the same key until the batch holds ``max_batch`` images, runs the batch, and splits
the outputs back per request. Requests with other keys wait for the next call; they are never
reordered among themselves.

Every request is validated when it is submitted (image shape, NaN, threshold count, preset name, …),
so one malformed request fails alone with its :class:`~avit.errors.InputError` instead of failing the
batch it would have joined.

**Under a latency SLO** (``slo_ms=``, or an :class:`~avit.runtime.slo.SloController`): every request gets
a deadline (admission + SLO); batches are formed earliest deadline first; a request that gives no knob
runs at the setting the controller picks for its batch (the best quality that lets every waiting request
finish in time, see :mod:`avit.runtime.slo`); a request that gives ``thresholds`` / ``preset`` runs at
them, as without an SLO. :meth:`MicroBatcher.admit` tells a service whether a new request can still make
the SLO at the fastest setting (else answer 503).

Whether batching pays off depends on the hardware: on a GPU a batch of 8 costs far less than 8 calls;
on a small CPU the model already uses every core at batch 1 and the gain is small or negative (see
docs/serving.md for the numbers measured here).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from avit.errors import InputError
from avit.runtime.session import AdaptiveSession, RunResult
from avit.runtime.slo import SloController, Waiting, _positive_ms, slo_ladder


@dataclasses.dataclass
class BatchedResult(RunResult):
    """A :class:`RunResult` for one request of a micro-batch.

    Attributes:
        batch_size: Images in the model call this request was part of (its own included).
        requests_in_batch: Requests that shared the call.
        queue_ms: Time from :meth:`MicroBatcher.submit` until the call started.
        setting: Under an SLO: the controller's label of the setting that served it (``"defaults"``, a
            preset name, or the thresholds); None without an SLO or for a request that gave its own knob.
        deadline: Under an SLO: clock time (``time.perf_counter``, s) by which the answer was due.
        (``latency_ms`` is the shared model call's wall time.)
    """

    batch_size: int = 1
    requests_in_batch: int = 1
    queue_ms: float = 0.0
    setting: str | None = None
    deadline: float | None = None


@dataclasses.dataclass(eq=False)  # identity: the queue removes requests by identity, never by array equality
class _Request:
    images: np.ndarray  # float32 [n, C, H, W], validated
    thresholds: np.ndarray  # float32 [P], validated
    key: tuple
    preset: str | None
    within_budget: bool | None
    submitted: float
    future: Future
    taken: bool = False
    deadline: float = float("inf")  # clock time (s) the answer is due; inf without an SLO
    setting: int | None = None  # under an SLO: the setting index of a fixed knob (-1: none); None: the controller's


@dataclasses.dataclass
class BatcherStats:
    """Counters since the batcher started (read with :attr:`MicroBatcher.stats`)."""

    requests: int = 0
    calls: int = 0
    images: int = 0
    cancelled: int = 0  # requests whose future was cancelled before they ran (never run)

    @property
    def mean_batch(self) -> float:
        """Mean images per model call."""
        return self.images / self.calls if self.calls else 0.0


class MicroBatcher:
    """Group concurrent requests with the same image shape and thresholds into one model call.

    Args:
        session: The (thread-safe) session to run.
        max_batch: Most images in one call (a single larger request still runs, alone).
        max_wait_ms: Longest time the oldest waiting request is held for others to join (0: run
            whatever is queued at once, never wait).
        workers: Runner threads, i.e. model calls that may run at the same time.
        slo_ms: Serve under this latency objective (admission to answer, ms): requests without a knob run
            at the setting a :class:`~avit.runtime.slo.SloController` chooses per batch from the session's
            calibration (its Pareto front, the model's defaults on top), batches form earliest deadline
            first. Needs a calibration for this backend (``avit calibrate``).
        controller: A ready :class:`~avit.runtime.slo.SloController` instead of ``slo_ms``.

    Example (embedding the runtime in your own service)::

        session = AdaptiveSession("model.onnx")            # model.calib.json beside it, from avit calibrate
        with MicroBatcher(session, slo_ms=2600) as batcher:
            if not batcher.admit():                         # even the fastest setting would miss the SLO
                ...                                         # answer 503
            result = batcher.run(image)                     # result.setting, result.thresholds, result.deadline

    Use as a context manager, or call :meth:`close`. ``submit`` returns a
    :class:`concurrent.futures.Future`; ``run`` blocks for the result.

    Raises:
        InputError: ``max_batch`` < 1, ``max_wait_ms`` < 0 or ``workers`` < 1; ``slo_ms`` not a positive
            number, or given for a session without a calibration, or below the fastest setting's calibrated
            latency of one image; both ``slo_ms`` and ``controller``.
    """

    def __init__(
        self,
        session: AdaptiveSession,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        workers: int = 1,
        slo_ms: float | None = None,
        controller: SloController | None = None,
    ) -> None:
        if int(max_batch) < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        if not float(max_wait_ms) >= 0:
            raise InputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if int(workers) < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.session = session
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1e3
        self.workers = int(workers)
        if slo_ms is not None and controller is not None:
            raise InputError("give slo_ms or a controller, not both")
        if slo_ms is not None:
            controller = slo_controller(session, slo_ms, workers=self.workers)
        #: The SLO controller, or None (no SLO: requests without a knob run at the model's defaults).
        self.controller: SloController | None = controller
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats = BatcherStats()
        self._threads = [
            threading.Thread(target=self._runner, name=f"avit-batcher-{i}", daemon=True) for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        images: np.ndarray,
        thresholds: Sequence[float] | np.ndarray | None = None,
        *,
        preset: str | None = None,
        latency_budget_ms: float | None = None,
        admitted: float | None = None,
    ) -> Future:
        """Queue one request; its :class:`BatchedResult` arrives in the returned future.

        Cancelling the future (``future.cancel()``, e.g. when the caller's deadline passes) before the
        request's call starts removes it: it never runs and takes no place in a batch.

        Args:
            images: float32 ``[C, H, W]`` (one image) or ``[n, C, H, W]`` preprocessed images.
            thresholds, preset, latency_budget_ms: as in :meth:`AdaptiveSession.run` (at most one).
                A budget picks the preset for this request's own image count; the wait in the queue
                (at most ``max_wait_ms``) and the images of requests it shares a call with are not
                part of the estimate.
            admitted: Under an SLO: when the request was admitted (``time.perf_counter()`` seconds; the
                deadline is this + SLO); default: now.

        Raises:
            InputError: malformed images or thresholds, unknown preset, bad budget (raised here, not
                through the future), or the batcher is closed.
        """
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        x = self.session.check_images(arr)
        name, within = None, None
        given = [n for n, v in (("thresholds", thresholds), ("preset", preset), ("latency_budget_ms", latency_budget_ms)) if v is not None]
        if len(given) > 1:
            raise InputError(f"give only one of thresholds, preset and latency_budget_ms (got {' and '.join(given)})")
        if preset is not None:
            thresholds, name = self.session.preset(preset).thresholds, preset
        elif latency_budget_ms is not None:
            chosen, within = self.session.select_preset(latency_budget_ms, batch=x.shape[0])
            thresholds, name = chosen.thresholds, chosen.name
        chosen_by_controller = self.controller is not None and not given
        t = self.session.thresholds(thresholds)
        now = time.perf_counter()
        request = _Request(
            images=x,
            thresholds=t,
            key=(x.shape[1:], b"slo" if chosen_by_controller else t.tobytes()),
            preset=name,
            within_budget=within,
            submitted=now,
            future=Future(),
        )
        if self.controller is not None:
            request.deadline = self.controller.deadline(now if admitted is None else admitted)
            if not chosen_by_controller:
                index = self.controller.index_of(t)
                request.setting = -1 if index is None else index
        with self._cond:
            if self._closed:
                raise InputError("the batcher is closed")
            self._pending.append(request)
            self._stats.requests += 1
            self._cond.notify_all()
        return request.future

    def run(self, images: np.ndarray, thresholds=None, *, preset=None, latency_budget_ms=None, timeout: float | None = None) -> BatchedResult:
        """:meth:`submit` and wait for the result (re-raises the call's exception)."""
        return self.submit(images, thresholds, preset=preset, latency_budget_ms=latency_budget_ms).result(timeout)

    def admit(self, images: int = 1) -> bool:
        """Under an SLO: whether a new request of ``images`` images can still be answered within it at the
        fastest setting, behind the requests already waiting (always True without an SLO)."""
        if self.controller is None:
            return True
        return self.controller.admit(self.waiting(), images)

    def retry_after_s(self) -> int:
        """Under an SLO: whole seconds until the waiting work is done at the fastest setting (at least 1)."""
        if self.controller is None:
            return 1
        return self.controller.retry_after_s(self.waiting())

    def waiting(self) -> list[Waiting]:
        """The requests waiting for a model call, as the SLO controller sees them (deadline, images, setting)."""
        with self._cond:
            return [Waiting(r.deadline, r.images.shape[0], r.setting) for r in self._pending
                    if not r.taken and not r.future.cancelled()]

    @property
    def queue_length(self) -> int:
        """Requests waiting for a model call (not yet started)."""
        with self._cond:
            return sum(1 for r in self._pending if not r.taken and not r.future.cancelled())

    @property
    def stats(self) -> BatcherStats:
        """A copy of the counters (requests, model calls, images)."""
        with self._cond:
            return dataclasses.replace(self._stats)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting requests, finish the queued ones, join the runner threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ runner
    def _group(self, head: _Request) -> tuple[list[_Request], int]:
        """Queued requests sharing ``head``'s key, oldest first (earliest deadline first under an SLO), up to
        ``max_batch`` images (head always)."""
        group, count = [], 0
        order = self._pending if self.controller is None else sorted(self._pending, key=lambda r: r.deadline)
        for request in order:
            if request.key != head.key or request.future.cancelled():
                continue
            n = request.images.shape[0]
            if group and count + n > self.max_batch:
                break
            group.append(request)
            count += n
            if count >= self.max_batch:
                break
        return group, count

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return None  # closed and drained
                head = self._pending[0]
                if head.future.cancelled():  # its caller gave up (e.g. a request deadline): never run it
                    self._pending.popleft()
                    self._stats.cancelled += 1
                    continue
                if self.controller is not None:  # earliest deadline first (stable: ties keep arrival order)
                    head = min((r for r in self._pending if not r.future.cancelled()), key=lambda r: r.deadline)
                deadline = head.submitted + self.max_wait_s
                while True:
                    group, count = self._group(head)
                    now = time.perf_counter()
                    if count >= self.max_batch or now >= deadline or self._closed:
                        break
                    self._cond.wait(deadline - now)
                    if head.taken:  # another runner took it while we waited
                        break
                if head.taken:
                    continue
                if self.controller is not None and head.key[1] == b"slo":
                    choice = self.controller.choose(self.waiting(), batch=count)  # (the condition's lock is reentrant)
                    for request in group:
                        request.setting = choice.index
                        request.thresholds = np.asarray(self.controller.settings[choice.index].thresholds, dtype=np.float32)
                for request in group:
                    request.taken = True
                self._pending = deque(r for r in self._pending if not r.taken)
                # from here on a caller can no longer cancel; requests cancelled meanwhile drop out
                running = [r for r in group if r.future.set_running_or_notify_cancel()]
                self._stats.cancelled += len(group) - len(running)
                if not running:
                    continue
                self._stats.calls += 1
                self._stats.images += sum(r.images.shape[0] for r in running)
                return running

    def _runner(self) -> None:
        while True:
            group = self._next_batch()
            if group is None:
                return
            started = time.perf_counter()
            index = group[0].setting if self.controller is not None else None
            images = group[0].images if len(group) == 1 else np.concatenate([r.images for r in group])
            end = self.controller.started(max(index, 0), images.shape[0]) if index is not None else None
            try:
                result = self.session.run(images, group[0].thresholds)
            except BaseException as exc:  # noqa: BLE001  (delivered to every waiting caller)
                if end is not None:
                    self.controller.finished(max(index, 0), images.shape[0], float("nan"), end)
                for request in group:
                    request.future.set_exception(exc)
                continue
            if end is not None:  # a fixed knob outside the ladder (-1) teaches nothing about the settings
                self.controller.finished(index, images.shape[0], result.latency_ms if index >= 0 else float("nan"), end)
            auto = self.controller is not None and group[0].key[1] == b"slo"
            label = self.controller.settings[index].label if auto else None
            offset = 0
            for request in group:
                n = request.images.shape[0]
                request.future.set_result(
                    BatchedResult(
                        logits=result.logits[offset : offset + n],
                        tokens_kept=result.tokens_kept[offset : offset + n],
                        thresholds=request.thresholds,
                        latency_ms=result.latency_ms,
                        preset=request.preset,
                        within_budget=request.within_budget,
                        batch_size=images.shape[0],
                        requests_in_batch=len(group),
                        queue_ms=(started - request.submitted) * 1e3,
                        setting=label,
                        deadline=None if self.controller is None else request.deadline,
                    )
                )
                offset += n


def slo_controller(session: AdaptiveSession, slo_ms: float, **options) -> SloController:
    """An :class:`~avit.runtime.slo.SloController` over ``session``'s calibration, the model's defaults on top.

    Args:
        session: A session with a calibration measured on its backend (``avit calibrate``).
        slo_ms: Latency objective from admission to answer, ms.
        **options: :class:`~avit.runtime.slo.SloController` keyword arguments (``reserve``, ``workers``, …).

    Raises:
        InputError: ``slo_ms`` not a positive number; no calibration (one line naming ``avit calibrate``);
            ``slo_ms`` below the fastest setting's calibrated latency of one image.
    """
    if session.calibration is None:
        _positive_ms(slo_ms, "slo_ms")  # a bad SLO is named first, whatever else is missing
        raise InputError(
            f"serving under an SLO needs a calibration of {session.path.name} on {session.backend.name}: "
            f"run 'avit calibrate {session.path} --target-latency-ms ...' first"
        )
    settings, slo = slo_ladder(session.calibration, session.thresholds(None).tolist(), slo_ms)
    return SloController(settings, slo, **options)
