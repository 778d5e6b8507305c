"""The root's settings: one JSON file (``trimmer root --config root.json``), flags over it.

Keys, defaults and rules are the fields below (`signatures.runtime.settings`);
``docs/operations.md`` lists them, checked against these fields. Relative
paths in the file are relative to the file.

With ``shm.enabled``, links to ipc:// leaves (same node) carry batches in a
shared-memory ring per link (rootproc/leaves/shm.py); a leaf's ``transport``
forces shm or the socket. ``curve`` (_trim/transport/curve.py)
authenticates and encrypts tcp links; ipc ones stay plain. A leaf's
``curve`` makes the root connect to its tcp endpoints with CURVE; the
root-level ``authorized`` (a directory of client public keys, or ``"*"``
for any key) makes the root's own tcp binds require it. Key files are read
when the root starts, not when the settings are loaded.

Secure by default: metrics bind loopback unless ``metrics_addr`` says
otherwise, and a tcp bind other hosts can reach without client
authentication (``curve.authorized`` naming a key directory) is refused
unless ``insecure`` is set; then it is said loudly at every start
(`RootSettings.exposures`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from _trim.errors import InvalidName
from _trim.transport.model_key import ModelKey
from _trim.transport.protocol import COMPRESSION_LZ4, COMPRESSION_NONE
from _trim.transport.sockets import exposed, exposure_problem, exposures
from rootproc.defaults import (
    BUFFER_POOL_BYTES,
    CACHE_SIZE,
    CACHE_STALE_IF_ERROR_S,
    CACHE_TTL_S,
    DEADLINE_MS,
    HEALTH_TIMEOUT_MS,
    MAX_CANDIDATES,
    MAX_DEADLINE_MS,
    MAX_REQUEST_MEMORY_NBYTES,
    MAX_REQUEST_NBYTES,
    METRICS_ADDR,
    METRICS_PORT,
    PING_INTERVAL_MS,
    REDIS_BACKOFF_MAX_MS,
    REDIS_BACKOFF_MS,
    REDIS_CONNECT_TIMEOUT_MS,
    REDIS_MAX_VALUE_BYTES,
    REDIS_PASSWORD_ENV,
    REDIS_POOL_SIZE,
    REDIS_RETRIES,
    REDIS_TIMEOUT_MS,
    ROOT_BIND,
    SHM_SLOT_BYTES,
    SHM_SLOTS,
    SHM_WAIT_MS,
)
from signatures.configstore import STAGES
from signatures.configstore.zookeeper.settings import ZooKeeperSettings
from signatures.runtime.settings import load, option, parse, validate
from signatures.runtime.tracing import TracingSettings

MODES_TRIM = ("on", "off")
MODES_COMPRESSION = (COMPRESSION_NONE, COMPRESSION_LZ4)
MODES_MISSING = ("default", "fail")
TRANSPORTS = ("auto", "shm", "socket")
ANY_CLIENT = "*"


@dataclass(frozen=True)
class LeafCurve:
    server_public_key: str | None = option(None, "the leaf's public key file (NAME.key)",
                                           path=True)
    client_secret_key: str | None = option(None, "this root's key pair for the link; "
                                           "default: the root's curve.secret_key", path=True)


@dataclass(frozen=True)
class LeafSpec:
    """A leaf the root links to: its replicas' endpoints and how batches travel."""

    name: str = option(help="leaf name, as the bundle's placement names it")
    endpoints: tuple[str, ...] = option((), "one endpoint per replica (ipc:// or tcp://)")
    models: tuple[str, ...] = option((), "model versions it hosts; default: the bundle's "
                                     "placement")
    compression: str | None = option(None, "none or lz4; default: the root-wide compression",
                                     choices=MODES_COMPRESSION)
    transport: str = option("auto", "auto, shm or socket (see shm)", choices=TRANSPORTS)
    curve: LeafCurve | None = option(None, "CURVE on its tcp endpoints")


def leaf_from_flag(text: str) -> LeafSpec:
    """``NAME=ENDPOINT[,ENDPOINT...]``, the form of ``--leaf``."""
    name, sep, endpoints = text.partition("=")
    if not sep or not name or not endpoints:
        raise ValueError("expected NAME=ENDPOINT[,ENDPOINT...]")
    return LeafSpec(name, tuple(endpoints.split(",")))


@dataclass(frozen=True)
class CacheSettings:
    size: int = option(CACHE_SIZE, "entities kept in the LRU cache in front of the feature "
                       "store (0: no cache)", minimum=0)
    ttl_s: float | None = option(CACHE_TTL_S, "seconds a cached entity is served before it "
                                 "is read again; null: until evicted", positive=True)
    stale_if_error_s: float = option(CACHE_STALE_IF_ERROR_S, "while the feature store does not "
                                     "answer, a request whose entities are all cached is served "
                                     "from entries expired up to this long ago (0: never)",
                                     minimum=0)


@dataclass(frozen=True)
class RedisSettings:
    """How a root talks to a redis:// feature store (rootproc/featurestore/redis_store.py)."""

    timeout_ms: float = option(REDIS_TIMEOUT_MS, "longest one fetch may take, retries "
                               "included; also capped at half the request's remaining deadline",
                               positive=True)
    connect_timeout_ms: float = option(REDIS_CONNECT_TIMEOUT_MS, "longest a (re)connect may "
                                       "take, within the fetch's time", positive=True)
    retries: int = option(REDIS_RETRIES, "new connections tried after a connection error "
                          "(never after a timeout), within the fetch's time", minimum=0)
    backoff_ms: float = option(REDIS_BACKOFF_MS, "after a failed fetch, fetches fail at once "
                               "for this long, doubling while it keeps failing", minimum=0)
    backoff_max_ms: float = option(REDIS_BACKOFF_MAX_MS, "longest backoff", minimum=0)
    max_value_bytes: int = option(REDIS_MAX_VALUE_BYTES, "largest record value read; a larger "
                                  "one is refused unread (its entity counts as missing)",
                                  positive=True)
    pool_size: int = option(REDIS_POOL_SIZE, "idle connections kept open (the serving loop "
                            "uses one at a time)", positive=True)
    password_env: str = option(REDIS_PASSWORD_ENV, "environment variable holding the password "
                               "when the address has none")
    tls_ca_file: str | None = option(None, "CA certificates for rediss:// (default: the "
                                     "system's)", path=True)

    def check(self) -> list[str]:
        if self.backoff_max_ms < self.backoff_ms:
            return [f"backoff_max_ms ({self.backoff_max_ms:g}) is below backoff_ms "
                    f"({self.backoff_ms:g})"]
        return []


# `trimmer store load` / `synth`: a bulk write is one long pipeline, not a request.
LOADER_REDIS = RedisSettings(timeout_ms=60_000, connect_timeout_ms=5_000, retries=0,
                             backoff_ms=0)


@dataclass(frozen=True)
class ShmSettings:
    enabled: bool = option(False, "same-node (ipc) leaf links carry batches in shared memory")
    slot_bytes: int = option(SHM_SLOT_BYTES, "bytes per slot, the ring's unit: a larger batch "
                             "takes a run of consecutive slots", positive=True)
    slots: int = option(SHM_SLOTS, "slots per link: the ring (slots x slot_bytes) holds the "
                        "batches in flight to one leaf", positive=True)
    wait_ms: float = option(SHM_WAIT_MS, "longest wait for a free run of slots before the "
                            "batch goes over the socket", minimum=0)


@dataclass(frozen=True)
class RootCurve:
    secret_key: str | None = option(None, "this root's CURVE key pair (NAME.key_secret)",
                                    path=True)
    authorized: str | None = option(None, "directory of client public keys its tcp binds "
                                    "accept, or '*' for any key", path=True,
                                    verbatim=(ANY_CLIENT,))


@dataclass(frozen=True)
class RootSettings:
    WHAT = "root config"

    schema: str = option(help="feature schema file", path=True)
    feature_store: str = option(help="feature store: an LMDB directory, or "
                                "redis[s]://HOST:PORT/DB[?namespace=NAME]", path=True)
    leaves: tuple[LeafSpec, ...] = option((), "leaves linked whatever the bundle says "
                                          "(they win over its endpoints)", flag="--leaf",
                                          metavar="NAME=ENDPOINT[,ENDPOINT...]",
                                          from_flag=leaf_from_flag)
    bundle: str | None = option(None, "a bundle file to serve (or config_store)", path=True,
                                replaces=("config_store",))
    config_store: str | None = option(None, "staged config store to follow (or bundle): a "
                                      "directory, or zk://HOST:PORT[,HOST:PORT...]/CHROOT",
                                      path=True, replaces=("bundle",))
    stage: str = option("production", "stage of the config store to follow", choices=STAGES)
    zookeeper: ZooKeeperSettings = option(ZooKeeperSettings())
    name: str = option("root", "name in pongs, heartbeats, logs and metrics")
    bind: tuple[str, ...] = option(ROOT_BIND, "endpoints clients connect to")
    cache: CacheSettings = option(CacheSettings())
    redis: RedisSettings = option(RedisSettings())
    tracing: TracingSettings = option(TracingSettings())
    deadline_ms: int = option(DEADLINE_MS, "a request's deadline when it names none",
                              positive=True)
    max_deadline_ms: int = option(MAX_DEADLINE_MS, "longest deadline a request may ask for",
                                  positive=True)
    max_candidates: int = option(MAX_CANDIDATES, "candidates per request", positive=True)
    max_request_nbytes: int = option(MAX_REQUEST_NBYTES, "bytes per request (too_large past it)",
                                     positive=True)
    max_request_memory_nbytes: int = option(MAX_REQUEST_MEMORY_NBYTES, "root memory one "
                                            "request may hold: records, batch, messages "
                                            "(too_large past it)", positive=True)
    max_memory_nbytes: int | None = option(None, "root memory the requests in flight may "
                                           "hold together (overloaded past it); null: half "
                                           "the node's physical memory", positive=True)
    missing: str = option("default", "an id the feature store lacks: 'default' values, or "
                          "'fail' the request", choices=MODES_MISSING)
    missing_max_share: float = option(1.0, "a request whose share of entities (user and "
                                      "candidates) the store lacks is over this fails "
                                      "store_unavailable instead of scoring defaults (1: never)",
                                      minimum=0)
    trim: str = option("on", "'on': each leaf gets the features its model reads", choices=MODES_TRIM)
    sub_feature: bool = option(True, "with trim on: send each model's reads (slices, narrowed "
                               "floats) to leaves that say they take them; off: the read "
                               "features whole")
    compression: str = option(COMPRESSION_NONE, "none or lz4, for every leaf link",
                              choices=MODES_COMPRESSION)
    metrics_port: int | None = option(METRICS_PORT, "port of /metrics and the /livez, /readyz "
                                      "probes; 0 or null: none")
    metrics_addr: str = option(METRICS_ADDR, "address the metrics server binds (loopback: "
                               "scrape through a local agent, or name an address)")
    ping_interval_ms: int = option(PING_INTERVAL_MS, "how often leaves are pinged", positive=True)
    health_timeout_ms: int = option(HEALTH_TIMEOUT_MS, "a leaf asked (pinged) and silent "
                                    "this long leaves rotation; what the root has not read yet "
                                    "does not count", positive=True)
    shm: ShmSettings = option(ShmSettings())
    buffer_pool_bytes: int = option(BUFFER_POOL_BYTES, "batches and messages of 32 MiB and "
                                    "more reuse buffers kept up to this many bytes; 0: "
                                    "every one mapped fresh", minimum=0)
    threads: int = option(1, "threads scoring requests: the serving loop, which sends each "
                          "model's message, and max(1, N - 1) workers that fetch and build "
                          "batches", positive=True)
    curve: RootCurve | None = option(None, "CURVE: this root's keys, and who may connect")
    insecure: bool = option(False, "accept tcp binds other hosts can reach without client "
                            "authentication (said loudly at start)")

    def __post_init__(self):
        if self.metrics_port is not None and self.metrics_port <= 0:
            object.__setattr__(self, "metrics_port", None)
        # A leaf's CURVE link uses the root's own key pair unless it names one.
        secret = self.curve.secret_key if self.curve is not None else None
        if secret and any(leaf.curve is not None and not leaf.curve.client_secret_key
                          for leaf in self.leaves):
            object.__setattr__(self, "leaves", tuple(
                dataclasses.replace(leaf, curve=dataclasses.replace(leaf.curve, client_secret_key=secret))
                if leaf.curve is not None and not leaf.curve.client_secret_key else leaf
                for leaf in self.leaves))

    def check(self) -> list[str]:
        problems = []
        if not self.bind:
            problems.append("bind: at least one endpoint")
        if (self.bundle is None) == (self.config_store is None):
            problems.append("exactly one of 'bundle' or 'config_store' must be set")
        if self.curve is not None and self.curve.authorized and not self.curve.secret_key:
            problems.append("curve.authorized needs curve.secret_key (the root's own key pair)")
        if self.open_binds() and not self.insecure:
            problems.append(exposure_problem(self.open_binds(), "clients", "score"))
        zk_problem = self.zookeeper.writer_problem(self.config_store)
        if zk_problem:
            problems.append(zk_problem)
        problems += self.tracing.problems()
        names = [leaf.name for leaf in self.leaves]
        if len(set(names)) != len(names):
            problems.append(f"leaf names must be unique: {names}")
        for leaf in self.leaves:
            problems += [f"leaf {leaf.name!r}: {p}" for p in _leaf_problems(leaf)]
        return problems

    def validate(self) -> RootSettings:
        return validate(self)

    def open_binds(self) -> list[str]:
        """tcp binds anyone who reaches the host may score on."""
        curve = self.curve or RootCurve()
        return exposed(self.bind, curve.secret_key, curve.authorized)

    def exposures(self) -> list[str]:
        """What these settings open to other hosts, to say loudly at start."""
        return exposures(self.open_binds(), self.metrics_addr, self.metrics_port, "clients",
                         "score")


def _leaf_problems(leaf: LeafSpec) -> list[str]:
    problems = []
    if not leaf.endpoints:
        problems.append("no endpoints")
    if leaf.curve is not None:
        if not leaf.curve.server_public_key:
            problems.append("curve.server_public_key is required")
        if not leaf.curve.client_secret_key:
            problems.append("curve needs client_secret_key, or a root-level curve.secret_key")
        if not any(ep.startswith("tcp://") for ep in leaf.endpoints):
            problems.append("curve applies to tcp:// endpoints and this leaf has none")
    for key in leaf.models:
        try:
            ModelKey(key)
        except InvalidName as exc:
            problems.append(str(exc))
    return problems


def config_from_dict(data: dict, base: str = ".") -> RootSettings:
    """The settings a JSON object gives (relative paths from ``base``), before
    `RootSettings.validate`; ConfigError naming every key it cannot read."""
    return parse(RootSettings, data, base=base)


def load_config(path) -> RootSettings:
    """A root config file alone; ConfigError listing every problem."""
    return load(RootSettings, path=str(path))


__all__ = ["CacheSettings", "LOADER_REDIS", "LeafCurve", "LeafSpec", "RedisSettings", "RootSettings",
           "RootCurve", "ShmSettings", "TRANSPORTS", "config_from_dict", "leaf_from_flag",
           "load_config"]
