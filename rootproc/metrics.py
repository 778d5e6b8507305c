"""The root's Prometheus metrics.

Each `RootMetrics` has its own registry, so that tests and tools can build
several in one process; `serve` exposes it over HTTP.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from rootproc.defaults import LATENCY_BUCKETS
from signatures.runtime.metrics_http import serve_metrics

STAGES = ("fetch", "preprocess", "trim", "leaf", "total")


class RootMetrics:
    def __init__(self, root_name: str = "root"):
        self.registry = r = CollectorRegistry()
        p = "trimmer_root_"
        self.requests = Counter(p + "requests", "client requests by outcome", ["outcome"], registry=r)
        self.errors = Counter(p + "errors", "request and model errors by kind", ["kind"], registry=r)
        self.model_results = Counter(p + "model_results", "per-model results", ["model", "outcome"],
                                     registry=r)
        self.latency = Histogram(p + "latency_seconds", "time per stage of a request", ["stage"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.bytes_sent = Counter(p + "sent_bytes", "batch message bytes sent to leaves "
                                  "(before compression)", ["leaf", "model"], registry=r)
        self.bytes_untrimmed = Counter(p + "untrimmed_bytes", "bytes the same messages would "
                                       "have taken with every schema feature, as trim off sends "
                                       "them (the counterfactual)",
                                       ["leaf", "model"], registry=r)
        self.wire_bytes = Counter(p + "wire_bytes", "payload bytes on the wire to leaves "
                                  "(after compression)", ["leaf", "model"], registry=r)
        self.sub_feature_saved = Counter(p + "sub_feature_saved_bytes", "batch message bytes "
                                         "not sent because models read less of a feature than "
                                         "all of it (slices, narrowed floats), beyond what "
                                         "feature-level trimming saves", ["leaf", "model"],
                                         registry=r)
        self.sub_feature_fail_open = Counter(p + "sub_feature_fail_open", "model batches sent "
                                             "with whole features although the model's reads "
                                             "would trim them: the leaf does not say it takes "
                                             "sub-feature columns", ["leaf", "model"], registry=r)
        self.grouped_fail_open = Counter(p + "grouped_fail_open", "model batches sent with "
                                         "the members of the model's grouped columns as columns "
                                         "of their own: the leaf does not say it takes grouped "
                                         "columns", ["leaf", "model"], registry=r)
        self.trim_gaps = Counter(p + "trim_gaps", "model versions sent every feature because "
                                 "the active config has no signature for them or a leaf does not "
                                 "agree with it", ["model"], registry=r)
        self.nonfinite_scores = Counter(p + "nonfinite_scores", "NaN or infinite scores leaves "
                                        "returned (passed on as they are)", ["model"], registry=r)
        self.leaf_replies_dropped = Counter(p + "leaf_replies_dropped", "leaf messages naming no "
                                            "request (unreadable, or without a usable id)",
                                            ["leaf"], registry=r)
        self.leaf_retries = Counter(p + "leaf_retries", "model batches sent to another replica "
                                    "after a leaf answered overloaded", ["leaf", "model"],
                                    registry=r)
        self.too_large = Counter(p + "too_large", "model batches answered too_large, not sent: "
                                 "larger than every replica's max_message_bytes",
                                 ["leaf", "model"], registry=r)
        self.missing = Counter(p + "missing_entities", "ids the store does not have "
                               "(served with default features)", ["source"], registry=r)
        self.leaf_up = Gauge(p + "leaf_up", "1 while the leaf replica is alive and answering "
                             "(not silent, connected, answered a ping since)",
                             ["leaf", "endpoint"], registry=r)
        self.rotation_exits = Counter(p + "leaf_rotation_exits", "leaf replicas leaving "
                                      "rotation, by why", ["leaf", "reason"], registry=r)
        self.rotation_entries = Counter(p + "leaf_rotation_entries", "leaf replicas entering "
                                        "rotation (the first time, and each time back)",
                                        ["leaf"], registry=r)
        self.model_failures = Counter(p + "model_failures", "model results the root itself "
                                      "failed, by kind and why", ["model", "kind", "reason"],
                                      registry=r)
        self.leaf_outstanding = Gauge(p + "leaf_outstanding", "requests in flight per leaf replica",
                                      ["leaf", "endpoint"], registry=r)
        self.in_flight = Gauge(p + "in_flight", "client requests being served", registry=r)
        self.memory_in_flight = Gauge(p + "memory_in_flight_bytes", "root memory the requests "
                                      "taken in hold, as estimated (rootproc/memory.py)",
                                      registry=r)
        self.memory_refused = Counter(p + "memory_refused", "score requests refused for memory: "
                                      "request_limit (too_large), root_limit (overloaded)",
                                      ["reason"], registry=r)
        self.info = Gauge(p + "config_info", "the active config", ["root", "config", "trim",
                                                                    "compression"], registry=r)
        self.root_name = root_name

    def follow_config(self, generation: int) -> None:
        """The series of a root following a staged config store (only then)."""
        r = self.registry
        self.config_errors = Counter("trimmer_root_config_errors", "new configs ignored because "
                                     "they could not be read, parsed or compiled", registry=r)
        self.config_schema_mismatches = Counter(
            "trimmer_root_config_schema_mismatches", "new configs refused because their bundle "
            "was built against a feature schema that disagrees with the root's", registry=r)
        self.config_reloads = Counter("trimmer_root_config_reloads", "configs installed while "
                                      "running", registry=r)
        self.config_generation = Gauge("trimmer_root_config_generation",
                                       "store generation of the active config", registry=r)
        self.config_generation.set(generation)

    def watch_cache(self, cached_store) -> None:
        """Export the cache's counters, read when scraped: the serving loop
        only bumps plain ints, never a Prometheus lock."""
        self.registry.register(_CacheCollector(cached_store))

    def serve(self, port: int, addr: str = "127.0.0.1", probes=None):
        return serve_metrics(self.registry, port, addr, probes)


class _CacheCollector:
    def __init__(self, cached_store):
        self.cached = cached_store

    def collect(self):
        p = "trimmer_root_"
        lookups = CounterMetricFamily(p + "cache_lookups", "feature cache lookups",
                                      labels=["source", "result"])
        reads = CounterMetricFamily(p + "store_reads", "records read from the feature store",
                                    labels=["source"])
        for source, cache in list(self.cached.caches.items()):
            lookups.add_metric([source, "hit"], cache.hits)
            lookups.add_metric([source, "miss"], cache.misses)
            reads.add_metric([source], self.cached.store_reads[source])
        yield lookups
        yield reads
        cached = self.cached
        stale = CounterMetricFamily(p + "store_stale_served", "entities served from expired cache "
                                    "entries while the feature store did not answer",
                                    labels=["source"])
        for source, n in list(cached.stale_served.items()):
            stale.add_metric([source], n)
        errors = CounterMetricFamily(p + "store_errors", "feature store round trips that failed "
                                     "(timeout, connection, error, dataset_lost, dataset_replaced) or "
                                     "were not tried (backoff)",
                                     labels=["reason"])
        for reason, n in list(cached.store_errors.items()):
            errors.add_metric([reason], n)
        trips = cached.round_trips
        cumulative, buckets = 0, []
        for bound, n in zip(list(trips.buckets) + [float("inf")], list(trips.counts)):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency = HistogramMetricFamily(p + "store_latency_seconds", "feature store round trips "
                                        "(one per request the cache cannot answer alone)",
                                        buckets=buckets, sum_value=trips.total_s)
        up = GaugeMetricFamily(p + "store_up", "0 while the feature store is failing "
                               "(since its last failed round trip, until one succeeds)")
        up.add_metric([], 0 if cached.down_since is not None else 1)
        bad = CounterMetricFamily(p + "store_bad_records", "store values refused (their "
                                  "entities count as missing): corrupt, too_large",
                                  labels=["source", "reason"])
        refused = getattr(cached.store, "bad", None)
        for (source, reason), n in list(refused.counts.items() if refused is not None else []):
            bad.add_metric([source, reason], n)
        yield bad
        yield stale
        yield errors
        yield latency
        yield up


__all__ = ["RootMetrics", "STAGES"]
