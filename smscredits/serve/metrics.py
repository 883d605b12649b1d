"""``/metrics``: what the service did, in Prometheus' text format (prometheus-client).

Amounts are counted in millicredits, whole numbers (Prometheus' samples are floats, exact
for whole numbers up to 2**53: nine billion credits). Each app has its own registry; with
several workers, each worker counts its own requests unless ``PROMETHEUS_MULTIPROC_DIR`` is
set, in which case ``/metrics`` adds up every worker's files (prometheus-client's
multiprocess mode, which ``serve --workers`` sets up).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from smscredits.charging import ChargeResult

# The amount each status moves: a charge's cost, a hold's held amount, a settle's cost, a
# void's released hold, a refund's cost.
_MOVED = {"charged": "cost", "held": "held", "settled": "cost", "voided": "held",
          "refunded": "cost"}
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
disable_created_metrics()  # a *_created series per label set doubles the page for nothing
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 5000)


def _child(made: dict[Any, Any], key: Any, metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, made once per ``key``: ``labels`` takes a lock and builds
    a key of its own, at every call."""
    child = made.get(key)
    if child is None:
        child = made[key] = metric.labels(*labels)
    return child


class Metrics:
    def __init__(self) -> None:
        # In multiprocess mode the metrics live in the shared directory, not in a registry.
        registry = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else CollectorRegistry()
        self.registry = registry
        self.messages = Counter("smscredits_messages", "Messages answered, by op, status and "
                                "reason (replays apart)", ["op", "status", "reason", "replayed"],
                                registry=registry)
        self.credits = Counter("smscredits_millicredits", "Millicredits moved, by kind "
                               "(charged, held, settled, voided, refunded)", ["kind"],
                               registry=registry)
        self.requests = Histogram("smscredits_request_seconds", "Request latency, by route "
                                  "and HTTP status", ["route", "code"], buckets=_LATENCY,
                                  registry=registry)
        self.batch_size = Histogram("smscredits_batch_messages", "Messages per transaction "
                                    "(group commit)", buckets=_SIZES, registry=registry)
        self._requests: dict[tuple[str, int], Any] = {}
        self._messages: dict[tuple[str, str, str | None, bool], Any] = {}
        self._credits: dict[str, Any] = {}
        self.commit = Histogram("smscredits_batch_seconds", "Seconds per transaction, "
                                "charges and commit", buckets=_LATENCY, registry=registry)

    def request(self, route: str, status: int, seconds: float) -> None:
        _child(self._requests, (route, status), self.requests, route, str(status)).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit.observe(seconds)

    def results(self, op: str, results: Iterable[ChargeResult]) -> None:
        for r in results:
            _child(self._messages, (op, r.status, r.reason, r.replayed), self.messages, op,
                   r.status, r.reason or "", "yes" if r.replayed else "no").inc()
            field = _MOVED.get(r.status)
            amount = getattr(r, field) if field is not None and not r.replayed else None
            if amount:
                _child(self._credits, r.status, self.credits, r.status).inc(int(amount * 1000))

    def render(self) -> tuple[bytes, str]:
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
