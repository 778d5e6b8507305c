"""The leaf's settings: ``trimmer leaf --config leaf.json``, flags over it.

Keys, defaults and rules are the fields below (`signatures.runtime.settings`), the
same shape as the root's; ``docs/operations.md`` lists them, checked
against these fields. Relative paths in the file are relative to the file.

Secure by default, as the root: metrics on loopback unless told otherwise,
and a tcp bind other hosts can reach is refused without client
authentication (``curve.authorized`` naming a key directory) unless
``insecure`` is set, which is said loudly at every start.
"""
from __future__ import annotations

from dataclasses import dataclass

from _trim.transport.sockets import exposed, exposure_problem, exposures
from leafproc.defaults import (
    DRAIN_TIMEOUT_S,
    MAX_BATCH_ROWS,
    MAX_MESSAGE_BYTES,
    MAX_QUEUE,
    MAX_WAIT_MS,
    REPO_MAX_ARTIFACT_BYTES,
    REPO_RETRY_MAX_S,
    RETIRE_GRACE_S,
)
from signatures.configstore import STAGES
from signatures.configstore.zookeeper.settings import ZooKeeperSettings
from signatures.runtime.settings import option
from signatures.runtime.tracing import TracingSettings

DEVICES = ("auto", "cpu", "cuda")
ANY_CLIENT = "*"


@dataclass(frozen=True)
class LeafCurveSettings:
    secret_key: str | None = option(None, "this leaf's CURVE key pair (NAME.key_secret, from "
                                    "`trimmer keys generate`): its tcp endpoints then require "
                                    "CURVE; ipc ones stay plain", path=True)
    authorized: str | None = option(None, "with curve.secret_key: directory of the public keys "
                                    "(NAME.key) of the roots allowed over tcp, re-read when it "
                                    "changes; '*': any key", path=True, verbatim=(ANY_CLIENT,))


@dataclass(frozen=True)
class LeafSettings:
    WHAT = "leaf config"

    repo: str = option(help="model repository: <repo>/<model>/<version>/{model.pt or "
                       "model.pt2, module_info.json}; a directory, or an object store URL "
                       "(s3://BUCKET/PREFIX, any fsspec URL) whose versions are downloaded "
                       "into repo_cache", path=True)
    bind: tuple[str, ...] = option(help="endpoints to bind, ipc:// or tcp://",
                                   metavar="ENDPOINT")
    repo_cache: str | None = option(None, "with a repo URL: directory versions are downloaded "
                                    "into, each verified and renamed into place whole "
                                    "(default: $XDG_CACHE_HOME/trimmer/models, else "
                                    "~/.cache/trimmer/models)", path=True)
    repo_max_artifact_bytes: int = option(REPO_MAX_ARTIFACT_BYTES, "with a repo URL: largest "
                                          "artifact downloaded (its size is read from the "
                                          "store before any byte)", positive=True)
    repo_retry_max_s: float = option(REPO_RETRY_MAX_S, "longest wait between tries of a "
                                     "version the repository could not deliver (1 s, "
                                     "doubling up to this)", minimum=0.1)
    models: tuple[str, ...] = option((), "model versions to serve; NAME alone serves all its "
                                     "versions; default: every version in the repository",
                                     flag="--model", metavar="NAME[@VERSION]")
    name: str | None = option(None, "leaf name in pongs and logs; default: leaf-<pid>")
    metrics_port: int = option(0, "port of /metrics and the /livez, /readyz probes (0: none)", minimum=0)
    metrics_addr: str = option("127.0.0.1", "address the metrics server binds (loopback: "
                               "scrape through a local agent, or name an address)")
    max_batch_rows: int = option(MAX_BATCH_ROWS, "rows above which dynamic batching stops "
                                 "merging requests", positive=True)
    max_wait_ms: float = option(MAX_WAIT_MS, "longest a request waits for others to merge "
                                "with (0: no dynamic batching)", minimum=0)
    max_message_bytes: int = option(MAX_MESSAGE_BYTES, "largest frame (and decompressed "
                                    "batch) accepted, at least a header's 64 KiB; a larger "
                                    "frame drops its connection. Said in pongs: roots send "
                                    "nothing larger (answering too_large)",
                                    minimum=64 * 1024)
    sub_feature_columns: bool = option(True, "say in pongs that this leaf takes sub-feature "
                                       "columns (a model's read: sliced positions, narrowed "
                                       "floats); off: roots send it whole features, as to a "
                                       "leaf that predates them")
    grouped_columns: bool = option(True, "say in pongs that this leaf takes grouped columns (a "
                                   "TorchRec model's KeyedJaggedTensor and dense tensor as "
                                   "it takes them); off: roots send the members as columns of "
                                   "their own, as to a leaf that predates them")
    max_queue: int = option(MAX_QUEUE, "requests waiting per model version; past it new ones "
                            "are answered 'overloaded' at once", positive=True)
    device: str = option("auto", "where models run", choices=DEVICES)
    threads: int = option(0, "torch intra-op threads (0: half the cores, at least 1)",
                          minimum=0)
    drain_timeout_s: float = option(DRAIN_TIMEOUT_S, "on SIGTERM, longest wait for requests "
                                    "in flight", minimum=0)
    config_store: str | None = option(None, "follow a stage of this staged config store (a "
                                      "directory, or zk://HOST:PORT[,HOST:PORT...]/CHROOT): "
                                      "serve the stage's versions placed on this leaf, loading "
                                      "and unloading them as it changes (instead of models)",
                                      path=True)
    stage: str = option("production", "stage to follow with config_store", choices=STAGES)
    zookeeper: ZooKeeperSettings = option(ZooKeeperSettings())
    advertise: tuple[str, ...] = option((), "with a zk:// config store: the endpoints roots "
                                        "reach this leaf at, published in its member node "
                                        "(default: bind, a wildcard address replaced by this "
                                        "host's name)", metavar="ENDPOINT")
    retire_grace_s: float = option(RETIRE_GRACE_S, "with config_store, how long a removed "
                                   "version keeps answering after pongs stop offering it "
                                   "(covers the roots' ping interval)", minimum=0)
    curve: LeafCurveSettings | None = option(None, "CURVE on the tcp endpoints")
    insecure: bool = option(False, "accept tcp binds other hosts can reach without client "
                            "authentication (said loudly at start)")
    tracing: TracingSettings = option(TracingSettings())
    log_level: str = option("INFO", "logging level")

    def check(self) -> list[str]:
        problems = []
        if self.config_store and self.models:
            problems.append("models (--model) and config_store (--config-store) exclude each "
                            "other: a following leaf serves what the store's stage says")
        curve = self.curve
        if curve is not None and (curve.secret_key is None) != (curve.authorized is None):
            problems.append("curve.secret_key (--curve-secret-key) and curve.authorized "
                            "(--curve-authorized) go together ('*' accepts any client key)")
        if self.open_binds() and not self.insecure:
            problems.append(exposure_problem(self.open_binds(), "roots", "run the models"))
        zk_problem = self.zookeeper.writer_problem(self.config_store)
        if zk_problem:
            problems.append(zk_problem)
        problems += self.tracing.problems()
        return problems

    def open_binds(self) -> list[str]:
        """tcp binds anyone who reaches the host may send batches to."""
        curve = self.curve or LeafCurveSettings()
        return exposed(self.bind, curve.secret_key, curve.authorized)

    def exposures(self) -> list[str]:
        """What these settings open to other hosts, to say loudly at start."""
        return exposures(self.open_binds(), self.metrics_addr, self.metrics_port, "roots",
                         "run the models")


__all__ = ["DEVICES", "LeafCurveSettings", "LeafSettings"]
