"""The root's configuration file, command-line overrides, and its active config.

Root config (JSON; relative paths are relative to the file)::

    {"name": "root-0",
     "bind": ["ipc:///run/trimmer/root-0.sock", "tcp://0.0.0.0:5550"],
     "schema": "schema.json",
     "bundle": "bundle.json",                     # or, instead of "bundle":
     "config_store": "configs/", "stage": "production",
     "store": "features/",                        # the LMDB feature store
     "leaves": [{"name": "leaf-0", "endpoints": ["ipc:///run/trimmer/leaf-0.sock"],
                 "models": ["ctr@3"],             # optional: else the bundle's placement
                 "compression": "lz4",            # optional: else the root-wide mode
                 "transport": "auto",             # or "shm" / "socket" (see "shm")
                 "curve": {"server_public_key": "keys/leaf-0.key",   # optional: CURVE on tcp
                           "client_secret_key": "keys/root.key_secret"}}],  # default: curve.secret_key
     "curve": {"secret_key": "keys/root.key_secret",  # this root's key pair (for its leaf links,
               "authorized": "keys/clients/"},        # and with "authorized", its tcp binds)
     "cache": {"size": 100000, "ttl_s": 60},
     "deadline_ms": 250, "max_deadline_ms": 10000,
     "max_candidates": 2048, "max_request_nbytes": 1048576,
     "missing": "default",                        # or "fail"
     "trim": "on", "compression": "none",
     "metrics_port": 9100,                        # null: no metrics endpoint
     "ping_interval_ms": 500, "health_timeout_ms": 2000,
     "shm": {"enabled": false, "slot_bytes": 4194304, "slots": 16, "wait_ms": 1}}

With ``shm.enabled``, links to ipc:// leaves (same node) carry batches in a
shared-memory ring of ``slots`` slots of ``slot_bytes`` per link
(rootproc/shm_link.py); a leaf's ``transport`` forces shm or the socket.

``curve`` (_trim/curve.py) authenticates and encrypts tcp links; ipc ones
stay plain. A leaf's ``curve`` makes the root connect to its tcp endpoints
with CURVE; the root-level ``authorized`` (a directory of client public
keys, or ``"*"`` for any key) makes the root's own tcp binds require it.
Key files are read when the root starts, not when the config is parsed.

Every key but ``schema``, ``store``, ``leaves`` and one of ``bundle`` /
``config_store`` has the default shown above (``bind``:
``tcp://127.0.0.1:5550``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace

from signatures.fsutil import read_json
from _trim.protocol import COMPRESSION_LZ4, COMPRESSION_NONE, split_model_key

from .shm_link import TRANSPORTS, ShmConfig, parse_shm_config

MODES_TRIM = ("on", "off")
MODES_COMPRESSION = (COMPRESSION_NONE, COMPRESSION_LZ4)
MODES_MISSING = ("default", "fail")


@dataclass(frozen=True)
class LeafCurve:
    server_public_key: str | None
    client_secret_key: str | None = None


@dataclass(frozen=True)
class RootCurve:
    secret_key: str | None = None
    authorized: str | None = None


@dataclass(frozen=True)
class LeafConfig:
    name: str
    endpoints: tuple[str, ...]
    models: tuple[str, ...] = ()
    compression: str | None = None
    transport: str = "auto"
    curve: LeafCurve | None = None


@dataclass(frozen=True)
class RootConfig:
    schema: str
    store: str
    leaves: tuple[LeafConfig, ...]
    bundle: str | None = None
    config_store: str | None = None
    stage: str = "production"
    name: str = "root"
    bind: tuple[str, ...] = ("tcp://127.0.0.1:5550",)
    cache_size: int = 100_000
    cache_ttl_s: float | None = 60.0
    deadline_ms: int = 250
    max_deadline_ms: int = 10_000
    max_candidates: int = 2048
    max_request_nbytes: int = 1 << 20
    missing: str = "default"
    trim: str = "on"
    compression: str = COMPRESSION_NONE
    metrics_port: int | None = 9100
    ping_interval_ms: int = 500
    health_timeout_ms: int = 2000
    shm: ShmConfig = ShmConfig()
    curve: RootCurve | None = None

    def validate(self) -> "RootConfig":
        problems = []
        if not self.bind:
            problems.append("bind: at least one endpoint")
        if (self.bundle is None) == (self.config_store is None):
            problems.append("exactly one of 'bundle' or 'config_store' must be set")
        if self.trim not in MODES_TRIM:
            problems.append(f"trim must be one of {MODES_TRIM}, got {self.trim!r}")
        if self.compression not in MODES_COMPRESSION:
            problems.append(f"compression must be one of {MODES_COMPRESSION}, got {self.compression!r}")
        if self.missing not in MODES_MISSING:
            problems.append(f"missing must be one of {MODES_MISSING}, got {self.missing!r}")
        for key in ("deadline_ms", "max_deadline_ms", "max_candidates", "max_request_nbytes",
                    "ping_interval_ms", "health_timeout_ms"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{key} must be a positive integer, got {value!r}")
        if self.cache_size < 0:
            problems.append(f"cache.size must be >= 0, got {self.cache_size}")
        if self.curve is not None and self.curve.authorized and not self.curve.secret_key:
            problems.append("curve.authorized needs curve.secret_key (the root's own key pair)")
        names = [leaf.name for leaf in self.leaves]
        if len(set(names)) != len(names):
            problems.append(f"leaf names must be unique: {names}")
        for leaf in self.leaves:
            if not leaf.endpoints:
                problems.append(f"leaf {leaf.name!r}: no endpoints")
            if leaf.compression not in (None,) + MODES_COMPRESSION:
                problems.append(f"leaf {leaf.name!r}: compression {leaf.compression!r}")
            if leaf.transport not in TRANSPORTS:
                problems.append(f"leaf {leaf.name!r}: transport must be one of {TRANSPORTS}, "
                                f"got {leaf.transport!r}")
            if leaf.curve is not None:
                if not leaf.curve.server_public_key:
                    problems.append(f"leaf {leaf.name!r}: curve.server_public_key is required")
                if not (leaf.curve.client_secret_key or (self.curve and self.curve.secret_key)):
                    problems.append(f"leaf {leaf.name!r}: curve needs client_secret_key, or a "
                                    "root-level curve.secret_key")
                if not any(ep.startswith("tcp://") for ep in leaf.endpoints):
                    problems.append(f"leaf {leaf.name!r}: curve applies to tcp:// endpoints "
                                    "and this leaf has none")
            for key in leaf.models:
                try:
                    split_model_key(key)
                except ValueError as exc:
                    problems.append(f"leaf {leaf.name!r}: {exc}")
        if problems:
            raise ValueError("root config: " + "; ".join(problems))
        return self


def _path(base: str, value):
    if value is None:
        return None
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))


def _as_list(value) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _curve_dict(value, keys: set, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"root config: {where}: expected an object with {sorted(keys)}")
    unknown = set(value) - keys
    if unknown:
        raise ValueError(f"root config: {where}: unknown keys {sorted(unknown)}")
    bad = [k for k, v in value.items() if not (v is None or isinstance(v, str))]
    if bad:
        raise ValueError(f"root config: {where}: {', '.join(sorted(bad))} must be file paths")
    return value


def parse_root_curve(value, base: str = ".") -> RootCurve:
    d = _curve_dict(value, {"secret_key", "authorized"}, "curve")
    authorized = d.get("authorized")
    return RootCurve(_path(base, d.get("secret_key")),
                     authorized if authorized == "*" else _path(base, authorized))


def parse_leaf(d, where: str = "leaves", base: str = ".",
               root_curve: RootCurve | None = None) -> LeafConfig:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise ValueError(f"root config: {where}: each leaf needs a string 'name'")
    unknown = set(d) - {"name", "endpoint", "endpoints", "models", "compression", "transport",
                        "curve"}
    if unknown:
        raise ValueError(f"root config: leaf {d['name']!r}: unknown keys {sorted(unknown)}")
    endpoints = _as_list(d.get("endpoints")) + _as_list(d.get("endpoint"))
    curve = None
    if d.get("curve") is not None:
        c = _curve_dict(d["curve"], {"server_public_key", "client_secret_key"},
                        f"leaf {d['name']!r}: curve")
        client = _path(base, c.get("client_secret_key")) or (root_curve and root_curve.secret_key)
        curve = LeafCurve(_path(base, c.get("server_public_key")), client or None)
    return LeafConfig(d["name"], endpoints, _as_list(d.get("models")), d.get("compression"),
                      d.get("transport", "auto"), curve)


def config_from_dict(data: dict, base: str = ".") -> RootConfig:
    if not isinstance(data, dict):
        raise ValueError("root config must be a JSON object")
    known = {f.name for f in fields(RootConfig)} | {"cache"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"root config: unknown keys {unknown}")
    missing = [k for k in ("schema", "store") if k not in data]
    if missing:
        raise ValueError(f"root config: missing {', '.join(missing)}")
    kw = {k: v for k, v in data.items() if k not in ("cache", "leaves")}
    for key in ("schema", "store", "bundle", "config_store"):
        if key in kw:
            kw[key] = _path(base, kw[key])
    if "bind" in kw:
        kw["bind"] = _as_list(kw["bind"])
    cache = data.get("cache", {})
    if "size" in cache:
        kw["cache_size"] = int(cache["size"])
    if "ttl_s" in cache:
        kw["cache_ttl_s"] = cache["ttl_s"]
    if data.get("curve") is not None:
        kw["curve"] = parse_root_curve(data["curve"], base)
    kw["leaves"] = tuple(parse_leaf(d, base=base, root_curve=kw.get("curve"))
                         for d in data.get("leaves", []))
    if "shm" in data:
        kw["shm"] = parse_shm_config(data["shm"])
    return RootConfig(**kw)


def load_config(path) -> RootConfig:
    path = os.fspath(path)
    return config_from_dict(read_json(path, "root config"), os.path.dirname(os.path.abspath(path)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="root config file (JSON)")
    parser.add_argument("--name")
    parser.add_argument("--bind", action="append", help="endpoint to bind (repeatable; replaces the file's)")
    parser.add_argument("--schema")
    parser.add_argument("--bundle")
    parser.add_argument("--config-store", dest="config_store")
    parser.add_argument("--stage")
    parser.add_argument("--store", help="feature store directory (LMDB)")
    parser.add_argument("--leaf", action="append", metavar="NAME=ENDPOINT[,ENDPOINT...]",
                        help="a leaf and its replica endpoints (repeatable; replaces the file's)")
    parser.add_argument("--trim", choices=MODES_TRIM)
    parser.add_argument("--compression", choices=MODES_COMPRESSION)
    parser.add_argument("--missing", choices=MODES_MISSING)
    parser.add_argument("--deadline-ms", dest="deadline_ms", type=int)
    parser.add_argument("--max-candidates", dest="max_candidates", type=int)
    parser.add_argument("--cache-size", dest="cache_size", type=int)
    parser.add_argument("--cache-ttl-s", dest="cache_ttl_s", type=float)
    parser.add_argument("--metrics-port", dest="metrics_port", type=int,
                        help="Prometheus port; 0 or negative: none")


def config_from_args(args: argparse.Namespace) -> RootConfig:
    """The file named by --config, overridden by flags (or flags alone)."""
    overrides = {}
    for key in ("name", "schema", "bundle", "config_store", "stage", "store", "trim", "compression",
                "missing", "deadline_ms", "max_candidates", "cache_size", "cache_ttl_s"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    for key in ("schema", "bundle", "config_store", "store"):
        if key in overrides:
            overrides[key] = os.path.abspath(overrides[key])
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port if args.metrics_port > 0 else None
    if args.bind:
        overrides["bind"] = tuple(args.bind)
    if args.leaf:
        leaves = []
        for spec in args.leaf:
            name, sep, eps = spec.partition("=")
            if not sep or not name or not eps:
                raise ValueError(f"--leaf {spec!r}: expected NAME=ENDPOINT[,ENDPOINT...]")
            leaves.append(LeafConfig(name, tuple(eps.split(","))))
        overrides["leaves"] = tuple(leaves)
    if args.config:
        cfg = load_config(args.config)
        if "bundle" in overrides:
            overrides.setdefault("config_store", None)
        elif "config_store" in overrides:
            overrides.setdefault("bundle", None)
        cfg = replace(cfg, **overrides)
    else:
        missing = [k for k in ("schema", "store") if k not in overrides]
        if missing:
            raise ValueError(f"without --config, give --{' and --'.join(missing)}")
        overrides.setdefault("leaves", ())
        cfg = RootConfig(**overrides)
    return cfg.validate()


__all__ = ["RootConfig", "LeafConfig", "LeafCurve", "RootCurve", "load_config", "config_from_dict", "config_from_args",
           "add_arguments"]
