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


@dataclasses.dataclass
class BatchedResult(RunResult):
    """A :class:`RunResult` for one request of a micro-batch.

    Attributes:
        batch_size: Images in the model call this request was part of (its own included).
        requests_in_batch: Requests that shared the call.
        queue_ms: Time from :meth:`MicroBatcher.submit` until the call started.
        (``latency_ms`` is the shared model call's wall time.)
    """

    batch_size: int = 1
    requests_in_batch: int = 1
    queue_ms: float = 0.0


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

    Use as a context manager, or call :meth:`close`. ``submit`` returns a
    :class:`concurrent.futures.Future`; ``run`` blocks for the result.

    Raises:
        InputError: ``max_batch`` < 1, ``max_wait_ms`` < 0 or ``workers`` < 1.
    """

    def __init__(self, session: AdaptiveSession, *, max_batch: int = 8, max_wait_ms: float = 2.0, workers: int = 1) -> None:
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
        t = self.session.thresholds(thresholds)
        request = _Request(
            images=x,
            thresholds=t,
            key=(x.shape[1:], t.tobytes()),
            preset=name,
            within_budget=within,
            submitted=time.perf_counter(),
            future=Future(),
        )
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
        """Queued requests sharing ``head``'s key, oldest first, up to ``max_batch`` images (head always)."""
        group, count = [], 0
        for request in self._pending:
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
            try:
                images = group[0].images if len(group) == 1 else np.concatenate([r.images for r in group])
                result = self.session.run(images, group[0].thresholds)
            except BaseException as exc:  # noqa: BLE001  (delivered to every waiting caller)
                for request in group:
                    request.future.set_exception(exc)
                continue
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
                    )
                )
                offset += n
