"""The root as one object: `Root.build` makes every part from the settings,
`Root.run` serves until drained, `Root.close` tears down whatever was made.

A root is the feature store behind its cache, its metrics, the config it
serves (compiled), the leaf links with their shared-memory rings, the client
socket and its send side (rootproc/frontend.py), the router that holds each
request until its one reply (rootproc/router.py), the scorer that builds
and sends batches (rootproc/scoring.py, with its batch worker threads), the
serving loop over them (rootproc/server.py) and, when it follows a stage,
the config follower thread (rootproc/rollout/follower.py). This module owns
their order. `close` is the only teardown, whether `build` got halfway,
`run` returned or `run` raised: the client socket first (while it is open it
takes in requests nobody would read any more), then the threads (follower,
batch workers), the links and the store.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import zmq

from _trim.errors import ConfigError
from _trim.transport.sockets import check_free, remove_ipc_files
from rootproc.featurestore import open_feature_store
from rootproc.featurestore.base import FeatureStore
from rootproc.featurestore.cache import CachedStore
from rootproc.frontend import ClientReplies, ClientSocket
from rootproc.leaves.links import LeafLinks
from rootproc.memory import MemoryBudget, root_memory_limit
from rootproc.metrics import RootMetrics
from rootproc.rollout.follower import ConfigFollower
from rootproc.rollout.installed import NoActiveConfig, load_active_config, prepare_config
from rootproc.router import Router
from rootproc.scoring import Scorer
from rootproc.server import RootServer
from rootproc.settings import RootSettings
from signatures.runtime.metrics_http import stop_serving
from signatures.runtime.probes import Probes
from signatures.runtime.tracing import Tracing, start_tracing
from signatures.schema import FeatureSchema

log = logging.getLogger("rootproc")

# A root whose stage has no active config yet looks again this often, and
# says it is still waiting this often.
CONFIG_WAIT_POLL_S = 0.5
CONFIG_WAIT_LOG_S = 60.0


class StoppedWaiting(Exception):
    """A stop signal came while the root waited for its stage's first config."""


class Root:
    def __init__(self, settings: RootSettings, ctx: zmq.Context | None = None):
        self.settings = settings
        self.name = settings.name
        self.ctx = ctx or zmq.Context.instance()
        self.store: FeatureStore | None = None
        self.metrics: RootMetrics | None = None
        self.links: LeafLinks | None = None
        self.client: ClientSocket | None = None
        self.scorer: Scorer | None = None
        self.follower: ConfigFollower | None = None
        self.server: RootServer | None = None
        # /livez and /readyz: the config wait, then the serving loop, say how it goes.
        self.probes = Probes(starting="starting: no config installed yet")
        self.http = None   # the metrics port's server, from before the config wait
        self._drained = False
        self.tracing: Tracing | None = None
        self._closed = False

    @classmethod
    def build(cls, settings: RootSettings, ctx: zmq.Context | None = None,
              stopping: Callable[[], bool] = lambda: False) -> Root:
        """A root ready to `run`. TrimmerError or ValueError, saying why, when
        it cannot start with these settings; nothing it made is left open then.
        A stage without an active config yet is waited for (`first_config`);
        StoppedWaiting when ``stopping()`` says so meanwhile."""
        root = cls(settings, ctx)
        try:
            root._build(stopping)
        except BaseException:
            root.close()
            raise
        return root

    def first_config(self, stopping: Callable[[], bool]):
        """The config the root starts on. A stage with no active config yet
        (a fleet started before its first deploy) is waited for, not ready:
        nothing bound, no leaf linked, said in the log at once and every
        CONFIG_WAIT_LOG_S, until a deploy gives the stage one."""
        cfg = self.settings
        said = None
        while True:
            try:
                return load_active_config(cfg)
            except NoActiveConfig as exc:
                now = time.monotonic()
                if said is None or now - said >= CONFIG_WAIT_LOG_S:
                    log.warning("%s: %s: waiting for one (not ready: nothing bound, no leaf "
                                "linked); `trimmer deploy BUNDLE --stage %s` gives it one",
                                cfg.name, exc, cfg.stage)
                    said = now
                self.probes.set_ready(False, f"{exc}: waiting for a deploy to stage {cfg.stage}")
            if stopping():
                raise StoppedWaiting()
            self.probes.beat()
            time.sleep(CONFIG_WAIT_POLL_S)

    def _build(self, stopping: Callable[[], bool]) -> None:
        cfg = self.settings
        # Before anything is bound or linked: a live process's endpoint or port is refused.
        check_free(cfg.bind, cfg.metrics_addr, cfg.metrics_port)
        schema = FeatureSchema.load(cfg.schema)
        store = self.store = open_feature_store(cfg.feature_store, cfg.redis)
        cached = CachedStore(store, cfg.cache.size, cfg.cache.ttl_s, cfg.cache.stale_if_error_s)
        metrics = self.metrics = RootMetrics(cfg.name)
        metrics.watch_cache(cached)
        if cfg.metrics_port:   # before the config wait: /livez answers meanwhile
            self.probes.beat()
            try:
                self.http = metrics.serve(cfg.metrics_port, cfg.metrics_addr, self.probes)
            except OSError as exc:   # taken since check_free looked
                raise ConfigError(f"cannot serve metrics on {cfg.metrics_addr}:"
                                  f"{cfg.metrics_port}: {exc}") from exc
        prepare = functools.partial(prepare_config, schema, store.layouts, cfg.trim)
        prepared = prepare(self.first_config(stopping))
        if prepared.pre_full.absent_features:
            log.warning("feature store has no raw field for %s: they take their defaults",
                        ", ".join(prepared.pre_full.absent_features))
        poller = zmq.Poller()
        links = self.links = LeafLinks(self.ctx, cfg, prepared.active, metrics, poller)
        client = self.client = ClientSocket(self.ctx, cfg)
        replies = ClientReplies(client.socket, self.name, metrics)
        budget = MemoryBudget(cfg.max_request_memory_nbytes, root_memory_limit(cfg),
                              metrics.memory_refused, metrics.memory_in_flight)
        router = Router(links.pool, links.shm, metrics, replies, budget)
        links.pool.on_drop = router.link_dropped   # what a dropped connection carried is lost
        scorer = self.scorer = Scorer(cfg, store, cached, metrics, links.pool, router, prepared,
                                      budget)
        scorer.tracing = self.tracing = start_tracing("trimmer-root", cfg.tracing, cfg.name)
        metrics.info.labels(self.name, prepared.active.id, cfg.trim, cfg.compression).set(1)
        if cfg.config_store:   # follow its stage (rootproc/rollout/follower.py)
            metrics.follow_config(prepared.active.generation)
            self.follower = ConfigFollower(cfg.config_store, cfg.stage, name=self.name,
                                           prepared=prepared, prepare=prepare,
                                           errors=metrics.config_errors,
                                           schema=schema, settings=cfg.zookeeper,
                                           schema_mismatches=metrics.config_schema_mismatches
                                           ).start()
        self.server = RootServer(cfg=cfg, client=client, replies=replies, poller=poller,
                                 links=links, router=router, scorer=scorer,
                                 follower=self.follower, metrics=metrics,
                                 schema_fingerprint=schema.fingerprint, probes=self.probes)
        for exposure in cfg.exposures():
            log.warning("%s: %s", cfg.name, exposure)
        self.probes.beat()   # built: the loop beats from here on
        log.info("%s: serving on %s (config %s, trim %s, compression %s, %d leaf replica(s))",
                 cfg.name, ", ".join(client.endpoints), scorer.active.id, cfg.trim,
                 cfg.compression, len(links.pool.links))

    def run(self) -> int:
        """Serve until a SIGTERM (or SIGINT) drain completes; 0."""
        assert self.server is not None, "run() after a build"
        self.server.run()
        self._drained = True
        return 0

    def close(self) -> None:
        """Stop and close everything `build` made; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.client is not None:
            self.client.close()
        if self.follower is not None:
            self.follower.stop()
        if self.scorer is not None:
            self.scorer.close()
        if self.links is not None:
            self.links.close()
        if self.store is not None:
            self.store.close()
        stop_serving(self.http)
        if self.tracing is not None:
            self.tracing.close()   # the spans that ended, sent
        if self.client is not None:
            remove_ipc_files(self.client.endpoints)
        if self._drained:
            log.info("%s: drained, exiting", self.name)


__all__ = ["Root"]
