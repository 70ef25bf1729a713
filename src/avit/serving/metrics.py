"""Prometheus metrics of the HTTP service (``GET /metrics``), with ``prometheus-client``.

Names follow the Prometheus naming guide (``avit_<what>_<unit>``, counters end in ``_total``):

=====================================  =========  ==========================================================
``avit_request_latency_seconds``       histogram  admission → answer of every answered ``POST /predict``
``avit_queue_length``                  gauge      requests waiting for a model call
``avit_answers_total{setting}``        counter    answers per threshold setting (``defaults``, a preset,
                                                  or the thresholds ``0.4,0.6``)
``avit_shed_total{reason}``            counter    refused at admission: ``queue_full`` (``--max-queue``) or
                                                  ``slo`` (even the fastest setting would miss the SLO)
``avit_timeouts_total``                counter    answered 504 (``--request-timeout-s``)
``avit_slo_misses_total``              counter    answered later than the SLO (``--slo-ms``)
``avit_tokens_kept_ratio{pause_point}`` histogram fraction of the patch tokens still active after each pause point
=====================================  =========  ==========================================================

Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from avit.errors import BackendUnavailableError

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise BackendUnavailableError("GET /metrics needs prometheus-client: pip install 'avit[serve]'") from exc

#: Latency buckets, seconds: 5 ms … 60 s, roughly ×1.5 apart (plus the SLO itself, added per app).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0,
                   4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ServiceMetrics:
    """The service's counters, histograms and gauges in a registry of their own.

    Args:
        pause_points: The model's pause points (block counts), labels of the tokens-kept histogram.
        queue_length: Called at scrape time for the queue-length gauge.
        slo_ms: The SLO, ms (its value becomes a latency bucket boundary, so ``le`` at the SLO is exact).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pause_points: Sequence[int], queue_length: Callable[[], int], slo_ms: float | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        buckets = sorted(set(LATENCY_BUCKETS) | ({slo_ms / 1e3} if slo_ms else set()))
        self.latency = Histogram("avit_request_latency_seconds", "Admission to answer of POST /predict, seconds.",
                                 buckets=buckets, registry=self.registry)
        self.queue = Gauge("avit_queue_length", "Requests waiting for a model call.", registry=self.registry)
        self.queue.set_function(lambda: float(queue_length()))
        self.answers = Counter("avit_answers", "Answers per threshold setting.", ["setting"], registry=self.registry)
        self.shed = Counter("avit_shed", "Requests refused at admission (503).", ["reason"], registry=self.registry)
        self.timeouts = Counter("avit_timeouts", "Requests answered 504 after --request-timeout-s.", registry=self.registry)
        self.slo_misses = Counter("avit_slo_misses", "Answers later than the SLO.", registry=self.registry)
        self.tokens = Histogram("avit_tokens_kept_ratio", "Fraction of patch tokens active after each pause point.",
                                ["pause_point"], buckets=RATIO_BUCKETS, registry=self.registry)
        self.pause_points = [str(p) for p in pause_points]
        for reason in ("queue_full", "slo"):
            self.shed.labels(reason)  # exported as 0 from the start

    def answered(self, seconds: float, setting: str, tokens_kept: Sequence[int], num_patches: int, slo_met: bool | None) -> None:
        """Record one answer: its latency (s), the setting that served it, tokens kept per pause point."""
        self.latency.observe(seconds)
        self.answers.labels(setting).inc()
        for point, kept in zip(self.pause_points, tokens_kept):
            self.tokens.labels(point).observe(kept / max(num_patches, 1))
        if slo_met is False:
            self.slo_misses.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
