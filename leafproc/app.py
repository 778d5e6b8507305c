"""The leaf as one object: `Leaf.build` makes every part from the settings,
`Leaf.run` serves until drained, `Leaf.close` tears down whatever was made.

A leaf is its metrics, a zmq context, CURVE keys, the model repository, the
model table (leafproc/table.py) with its worker threads, the I/O loop
(leafproc/server.py) and, when it follows a stage, the follower thread
(leafproc/follower.py). This module owns their order. `close` is the only
teardown, whether `build` got halfway, `run` returned or `run` raised: it
stops the threads (follower, then model workers) before it closes the
sockets they answer through, and the zmq context last.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import uuid

import torch
import zmq

from _trim.errors import ConfigError, NotFound
from _trim.transport.curve import ServerKeys
from _trim.transport.model_key import SEPARATOR, ModelKey
from _trim.transport.sockets import check_free, secured
from leafproc.follower import ModelFollower
from leafproc.metrics import LeafMetrics, RolloutMetrics
from leafproc.server import LeafServer
from leafproc.settings import LeafSettings
from leafproc.table import ModelTable, Target
from leafproc.worker import ModelWorker
from signatures.repository import open_repository
from signatures.repository.module_info import ModelRepository
from signatures.repository.objects import ObjectRepository
from signatures.runtime.probes import Probes
from signatures.runtime.tracing import Tracing, start_tracing

log = logging.getLogger("leafproc")


def select_models(repo: ModelRepository, wanted: list[str] | None) -> list[tuple[str, str]]:
    """(model, version) pairs to serve; NotFound naming every one not found."""
    if not wanted:
        found = list(repo.iter_versions())
        if not found:
            raise NotFound(f"model repository {repo.root} holds no model versions")
        return found
    out, missing = [], []
    for item in wanted:
        if SEPARATOR not in item:
            versions = repo.versions(item)
            out += [(item, v) for v in versions]
            if not versions:
                missing.append(item)
        elif repo.has((key := ModelKey(item)).name, key.version):
            out.append((key.name, key.version))
        else:
            missing.append(item)
    if missing:
        raise NotFound(f"not in model repository {repo.root}: {', '.join(missing)}")
    return list(dict.fromkeys(out))


def choose_device(setting: str) -> torch.device:
    """Where models run; ConfigError for ``cuda`` on a host without one."""
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise ConfigError("--device cuda: no CUDA device available")
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and cuda) else "cpu")


class Leaf:
    def __init__(self, settings: LeafSettings):
        self.tracing: Tracing | None = None
        self.settings = settings
        self.name = settings.name or f"leaf-{os.getpid()}"
        self.device: torch.device | None = None
        self.metrics: LeafMetrics | None = None
        self.ctx: zmq.Context | None = None
        self.table: ModelTable | None = None
        self.server: LeafServer | None = None
        self.follower: ModelFollower | None = None
        self.probes = Probes(starting="starting: no model loaded yet")   # /livez, /readyz
        self._served = False
        self._closed = False

    @classmethod
    def build(cls, settings: LeafSettings) -> Leaf:
        """A leaf ready to `run`. ConfigError, saying why, when it cannot
        start with these settings; nothing it made is left open then."""
        leaf = cls(settings)
        try:
            leaf._build()
        except BaseException:
            leaf.close()
            raise
        return leaf

    def _build(self) -> None:
        s = self.settings
        # Before anything is bound or loaded: a live process's endpoint or port is refused.
        check_free(s.bind, s.metrics_addr, s.metrics_port)
        following = bool(s.config_store)
        curve_keys = None
        if s.curve is not None and s.curve.secret_key:
            try:
                curve_keys = ServerKeys.load(s.curve.secret_key, s.curve.authorized, "leaf curve")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            if not any(secured(ep) for ep in s.bind):
                log.warning("--curve-secret-key: no tcp:// endpoint to secure (ipc stays plain)")
        try:
            repo = open_repository(s.repo, cache=s.repo_cache,
                                   max_artifact_bytes=s.repo_max_artifact_bytes)
            # A fixed list is read (downloaded) once, here: a leaf that cannot starts no more.
            loaded = [] if following else \
                [repo.load(m, v) for m, v in select_models(repo, list(s.models))]
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc)) from exc
        except OSError as exc:   # the cache directory
            raise ConfigError(f"model repository {s.repo}: cache {exc.filename}: "
                              f"{exc.strerror or exc}") from exc
        self.device = choose_device(s.device)
        # Leave a core for the I/O thread and decoding; several leaves may share a node.
        threads = s.threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)   # this thread's; each model thread sets its own

        self.metrics = LeafMetrics()
        # A fixed list never rolls out: its rollout series stay off the registry.
        rollout = RolloutMetrics(self.metrics.registry if following else None)
        if isinstance(repo, ObjectRepository):
            repo.on_download = rollout.downloaded_bytes.inc
        self.ctx = zmq.Context()
        reply_endpoint = f"inproc://leaf-replies-{uuid.uuid4().hex}"
        make_worker = functools.partial(
            ModelWorker, ctx=self.ctx, reply_endpoint=reply_endpoint, device=self.device,
            metrics=self.metrics, max_batch_rows=s.max_batch_rows,
            max_wait_s=s.max_wait_ms / 1000.0, max_message_bytes=s.max_message_bytes,
            threads=threads)
        self.table = ModelTable(name=self.name, make_worker=make_worker, metrics=self.metrics,
                                rollout=rollout, stage=s.stage if following else None,
                                retire_grace_s=s.retire_grace_s)
        follower = None
        if following:
            follower = self.follower = ModelFollower(store_path=str(s.config_store), stage=s.stage,
                                                     name=self.name, repo=repo, rollout=rollout,
                                                     settings=s.zookeeper, advertise=s.advertise,
                                                     retry_max_s=s.repo_retry_max_s,
                                                     curve_key=curve_keys.public.decode()
                                                     if curve_keys is not None else None)
        try:
            server = self.server = LeafServer(
                name=self.name, binds=list(s.bind), table=self.table, ctx=self.ctx,
                reply_endpoint=reply_endpoint, metrics=self.metrics,
                max_message_bytes=s.max_message_bytes, drain_timeout_s=s.drain_timeout_s,
                device=str(self.device), curve_keys=curve_keys, max_queue=s.max_queue,
                targets=follower.updates if follower else None,
                records=follower.records if follower else None, probes=self.probes,
                sub_feature_columns=s.sub_feature_columns, grouped_columns=s.grouped_columns)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot bind {', '.join(s.bind)}: {exc}") from exc
        server.install_signal_handlers()
        server.tracing = self.tracing = start_tracing("trimmer-leaf", s.tracing, self.name)
        for exposure in s.exposures():
            log.warning("leaf %s: %s", self.name, exposure)
        self.probes.beat()   # its model files read: the loop beats from here on
        try:
            self.metrics.serve(s.metrics_port, s.metrics_addr, self.probes)
        except OSError as exc:   # taken since check_free looked
            raise ConfigError(f"cannot serve metrics on {s.metrics_addr}:{s.metrics_port}: "
                              f"{exc}") from exc
        if follower is not None:
            try:
                follower.start()
            except Exception as exc:
                raise ConfigError(f"config store {s.config_store}, stage {s.stage}: "
                                  f"{exc}") from exc
        else:
            # After the server bound the replies' PULL socket, so that the
            # workers' PUSH sockets connect cleanly.
            self.table.update(time.monotonic(), Target.fixed(loaded))

    def run(self) -> int:
        """Serve until a SIGTERM (or SIGINT) drain completes; 0."""
        assert self.server is not None and self.table is not None, "run() after a build"
        keys = ", ".join(self.table.keys())
        what = keys or (f"nothing yet: following stage {self.settings.stage}, its models load "
                        "in the background" if self.follower is not None else "no model")
        log.info("leaf %s on %s serving %s (device %s%s)", self.name,
                 ", ".join(self.server.bound), what, self.device,
                 ", CURVE on tcp" if self.server.security is not None else "")
        self._served = True
        return self.server.run()

    def close(self) -> None:
        """Stop and close everything `build` made; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.follower is not None:
            self.follower.stop()
        if self.table is not None:
            self.table.close()
        if self.server is not None:
            self.server.close()
        if self.tracing is not None:
            self.tracing.close()   # the spans that ended, sent
        if self.metrics is not None:
            self.metrics.close()
        if self.ctx is not None:
            # A worker still loading or answering holds a socket: terminating
            # would wait for it, and the process exits without it anyway.
            if self.table is None or not self.table.running():
                self.ctx.term()
        if self._served:
            log.info("leaf %s stopped", self.name)


__all__ = ["Leaf", "choose_device", "select_models"]
