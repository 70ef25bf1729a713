"""Back-pressure for the HTTP service: admission (queue limit), request deadline, upload size limit.

Two pieces:

* :class:`Admission` (framework-free) — counts the requests the service is working on. At most
  ``workers + max_queue`` are admitted at a time: ``workers`` model calls running and ``max_queue``
  waiting. One more is *shed*: refused at once instead of queued, so a request that is admitted waits
  for at most ``max_queue`` others (its latency stays within about ``(max_queue / workers + 1)`` model
  calls) and an overloaded server answers every client quickly instead of letting all of them time out.
* :class:`RequestLimits` (an ASGI middleware, no framework imports) — applies them to the guarded
  paths (``POST /predict``) *before* the app reads the upload:

  ========  =============================================================================================
  413       ``Content-Length`` above ``max_upload_bytes``: answered before the body is read; a body
            without ``Content-Length`` (chunked) is counted while the app reads it and answered 413 as
            soon as it passes the limit.
  503       admission refused, answered at once: ``Retry-After`` (seconds, from the measured service
            time) and a one-line ``detail``. Refused are a request beyond ``workers + max_queue`` in
            progress (the memory guard), and under an SLO one that even the fastest setting could not
            answer in time (the ``slo`` check, :meth:`avit.runtime.MicroBatcher.admit`).
  504       no answer within ``timeout_s`` of admission: the request is cancelled (a request still
            waiting in the micro-batcher never runs) and the client gets a one-line ``detail``.
  ========  =============================================================================================

The connection stays open: uvicorn reads what is left of an unread body and drops it (never stored)
before the next request, so a client that sends its whole body before reading still gets the answer
instead of a connection reset. Sources: RFC 9110 §15.5.14 (413), §15.6.4 (503 + ``Retry-After``, §10.2.3), §15.6.5 (504).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from avit.errors import InputError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Admission:
    """Admit at most ``workers + max_queue`` requests at a time; count what was shed.

    Args:
        max_queue: Requests that may wait beyond the ``workers`` being run (None: no limit).
        workers: Requests served at the same time (the micro-batcher's runner threads).

    Thread-safe. :meth:`retry_after_s` estimates when a slot frees up from the mean service time of the
    last admitted requests (exponential average).

    Raises:
        InputError: ``max_queue`` < 0 or ``workers`` < 1.
    """

    def __init__(self, max_queue: int | None, workers: int = 1) -> None:
        if max_queue is not None and int(max_queue) < 0:
            raise InputError(f"max_queue must be >= 0, got {max_queue}")
        if int(workers) < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.max_queue = None if max_queue is None else int(max_queue)
        self.workers = int(workers)
        self._lock = threading.Lock()
        self._active = 0
        self._admitted = 0
        self._shed = 0
        self._shed_slo = 0
        self._timed_out = 0
        self._service_s: float | None = None

    @property
    def limit(self) -> int | None:
        """Most requests admitted at a time (None: unbounded)."""
        return None if self.max_queue is None else self.workers + self.max_queue

    def try_acquire(self, slo_check: Callable[[], bool] | None = None) -> str | None:
        """Admit one request (None) or shed it, counted: ``"queue_full"`` beyond the limit, ``"slo"`` when
        ``slo_check()`` says the SLO cannot be met."""
        with self._lock:
            if self.limit is not None and self._active >= self.limit:
                self._shed += 1
                return "queue_full"
        if slo_check is not None and not slo_check():
            with self._lock:
                self._shed += 1
                self._shed_slo += 1
            return "slo"
        with self._lock:
            self._active += 1
            self._admitted += 1
            return None

    def release(self, service_s: float | None = None) -> None:
        """A request admitted by :meth:`try_acquire` is answered (``service_s``: its time in the service)."""
        with self._lock:
            self._active -= 1
            if service_s is not None:
                self._service_s = service_s if self._service_s is None else 0.8 * self._service_s + 0.2 * service_s

    def timed_out(self) -> None:
        """Count a request answered 504."""
        with self._lock:
            self._timed_out += 1

    def retry_after_s(self) -> int:
        """Whole seconds for the requests in progress now to be answered: the mean time an admitted request
        spent in the service (queue included) lately, rounded up, at least 1 (``Retry-After`` has no fractions)."""
        with self._lock:
            mean = self._service_s or 0.0
        return max(1, math.ceil(mean))

    def stats(self) -> dict[str, int | None]:
        """``{"active", "admitted", "shed", "shed_slo", "timed_out", "limit"}`` since the start."""
        with self._lock:
            return {"active": self._active, "admitted": self._admitted, "shed": self._shed, "shed_slo": self._shed_slo,
                    "timed_out": self._timed_out, "limit": self.limit}


class _TooLarge(Exception):
    """Raised into the app by the counting ``receive`` when the body passes the limit."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


async def _answer(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: upload limit (413), admission (503 + Retry-After) and deadline (504) on ``paths``.

    Args:
        app: The ASGI app (e.g. the FastAPI app).
        admission: The :class:`Admission` to ask (None: no queue limit).
        max_upload_bytes: Largest request body on the guarded paths, bytes (None: no limit).
        timeout_s: Longest time from admission to the answer, seconds (None: no limit).
        paths: Guarded request paths (others pass through untouched).
        slo_check: Under an SLO: ``() -> bool``, whether a new request can still be answered in time
            (else 503); ``retry_after``: ``() -> int`` seconds for its ``Retry-After``.
        on_shed, on_timeout: Called with the reason (``"queue_full"`` / ``"slo"``) of each 503, and on each
            504 (metrics).

    The admission time (``time.perf_counter()``, s) is put in ``scope["state"]["avit_admitted"]``
    (``request.state.avit_admitted`` in FastAPI): the SLO counts from there.
    """

    def __init__(
        self,
        app,
        *,
        admission: Admission | None = None,
        max_upload_bytes: int | None = None,
        timeout_s: float | None = None,
        paths: Iterable[str] = ("/predict",),
        slo_check: Callable[[], bool] | None = None,
        retry_after: Callable[[], int] | None = None,
        on_shed: Callable[[str], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.slo_check = slo_check
        self.retry_after = retry_after
        self.on_shed = on_shed
        self.on_timeout = on_timeout
        self.admission = admission
        self.max_upload_bytes = max_upload_bytes
        self.timeout_s = timeout_s
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes
        length = _header(scope, b"content-length")
        if limit is not None and length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if declared > limit:
                await _answer(send, 413, f"upload of {declared} bytes is larger than the limit of {limit} bytes (--max-upload-mb)")
                return
        started = time.perf_counter()
        if self.admission is not None:
            refused = self.admission.try_acquire(self.slo_check)
            if refused is not None:
                if self.on_shed is not None:
                    self.on_shed(refused)
                if refused == "slo":
                    retry = self.retry_after() if self.retry_after is not None else 1
                    detail = f"the server cannot answer within its SLO now, even at its fastest setting; retry after {retry} s"
                else:
                    retry = self.admission.retry_after_s()
                    detail = f"the server is busy ({self.admission.limit} requests in progress); retry after {retry} s"
                await _answer(send, 503, detail, [(b"retry-after", str(retry).encode())])
                return
        scope.setdefault("state", {})["avit_admitted"] = started
        try:
            await self._guarded(scope, receive, send, limit)
        finally:
            if self.admission is not None:
                self.admission.release(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int | None) -> None:
        state = {"received": 0, "too_large": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and limit is not None:
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"] and not state["started"]:
                return  # the app's own answer to the aborted read is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            if self.timeout_s is None:
                await self.app(scope, counting_receive, guarded_send)
            else:
                await asyncio.wait_for(self.app(scope, counting_receive, guarded_send), self.timeout_s)
        except _TooLarge:
            pass
        except asyncio.TimeoutError:
            if self.admission is not None:
                self.admission.timed_out()
            if self.on_timeout is not None:
                self.on_timeout()
            if not state["started"]:
                await _answer(send, 504, f"no answer within {self.timeout_s:g} s (--request-timeout-s): the server is busy, the request was dropped")
            return
        if state["too_large"] and not state["started"]:
            await _answer(send, 413, f"upload is larger than the limit of {limit} bytes (--max-upload-mb)")
