"""Prometheus metrics of one leaf, on a registry of its own (so that tests and
embedding processes never collide on the global one): the serving series
(`LeafMetrics`, `ModelMetrics`) and those of following a stage (`RolloutMetrics`)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from signatures.runtime.metrics_http import serve_metrics, stop_serving

LATENCY_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                   100e-3, 250e-3, 500e-3, 1.0, 2.5)
ROW_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


class LeafMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("trimmer_leaf_requests", "Score requests received", ["model"], registry=r)
        self.rows = Counter("trimmer_leaf_rows", "Rows scored", ["model"], registry=r)
        self.errors = Counter("trimmer_leaf_errors", "Error replies sent, by kind", ["kind"], registry=r)
        self.expired = Counter("trimmer_leaf_expired", "Requests answered 'deadline' without "
                               "running: their deadline passed while they were queued",
                               ["model"], registry=r)
        self.received_bytes = Counter("trimmer_leaf_received_bytes",
                                      "Bytes of request frames received", registry=r)
        self.queue_seconds = Histogram("trimmer_leaf_queue_seconds",
                                       "Receipt to start of processing", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("trimmer_leaf_decode_seconds",
                                        "Decompress, decode, validate and tensor building per request",
                                        ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.infer_seconds = Histogram("trimmer_leaf_infer_seconds", "Forward pass wall time",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("trimmer_leaf_batch_rows", "Rows per forward pass",
                                    ["model"], buckets=ROW_BUCKETS, registry=r)
        self.batch_requests = Histogram("trimmer_leaf_batch_requests",
                                        "Requests merged per forward pass", ["model"],
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.ready = Gauge("trimmer_leaf_model_ready", "1 when a model version serves traffic",
                           ["model"], registry=r)
        self.in_flight = Gauge("trimmer_leaf_in_flight", "Requests received and not yet answered",
                               registry=r)
        self._server = None

    def for_model(self, key: str) -> ModelMetrics:
        return ModelMetrics(self, key)

    def serve(self, port: int, addr: str = "127.0.0.1", probes=None) -> None:
        if port:
            self._server = serve_metrics(self.registry, port, addr, probes)

    def close(self) -> None:
        stop_serving(self._server)
        self._server = None


class ModelMetrics:
    """One model version's labelled series, looked up once: ``labels()`` costs
    more than the update itself, and a request updates a dozen of them."""

    def __init__(self, metrics: LeafMetrics, key: str):
        self.requests = metrics.requests.labels(key)
        self.rows = metrics.rows.labels(key)
        self.expired = metrics.expired.labels(key)
        self.queue_seconds = metrics.queue_seconds.labels(key)
        self.decode_seconds = metrics.decode_seconds.labels(key)
        self.infer_seconds = metrics.infer_seconds.labels(key)
        self.batch_rows = metrics.batch_rows.labels(key)
        self.batch_requests = metrics.batch_requests.labels(key)
        self.ready = metrics.ready.labels(key)


class RolloutMetrics:
    """What following a stage did. A leaf serving a fixed list passes no
    registry: the series then count into nothing, so its /metrics page shows
    no rollout it never does."""

    def __init__(self, registry: CollectorRegistry | None):
        self.load_failures = Counter("trimmer_leaf_model_load_failures", "model versions that "
                                     "failed to load or warm up", ["model"], registry=registry)
        self.config_errors = Counter("trimmer_leaf_config_errors", "store states that could not "
                                     "be read (the leaf kept what it served)", registry=registry)
        self.repository_errors = Counter(
            "trimmer_leaf_repository_errors", "tries to read a model version from the repository "
            "that failed, by kind (unreachable, not_found, too_large, interrupted, "
            "hash_mismatch, invalid, cache); retried with backoff", ["model", "kind"], registry=registry)
        self.downloaded_bytes = Counter("trimmer_leaf_repository_downloaded_bytes",
                                        "artifact bytes downloaded from an object store "
                                        "repository, verified, into the cache",
                                        registry=registry)
        self.generation = Gauge("trimmer_leaf_config_generation",
                                "store generation the leaf follows", registry=registry)
