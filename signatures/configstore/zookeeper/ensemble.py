"""One connection to a ZooKeeper ensemble, as the config store uses it.

`Ensemble` parses the store's address (``zk://HOST:PORT[,HOST:PORT...]/CHROOT``),
connects on first use (kazoo, ZooKeeper's Python client), and turns every
request into one that either answers within ``connect_timeout_s`` or raises
`ConfigStoreUnavailable` naming the ensemble: a process never blocks on a
ZooKeeper that is down. kazoo reconnects by itself, forever, in the
background; `on_state` callbacks hear each loss and each reconnection.

Paths are the chroot's own (``/CHROOT/stages/canary``), not kazoo's chroot
option, so that a writer can create the chroot and a reader of a chroot
nobody created yet sees an empty store.

Large values (bundles, schemas) are *blobs*: zlib-compressed, in one node
when they fit `NODE_BYTES`, else in chunks under ``/CHROOT/chunks/<sha256>/``
written first, with the node itself written last (it names the chunks and
their digest), so a reader sees the whole blob or none of it. Reads are
bounded by the settings (``max_chunks``, ``max_compressed_bytes``,
``max_inflated_bytes``): a node over any of them, whoever wrote it, is
refused (InvalidInput naming the limit) before more is read or inflated.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, Permissions, make_acl, make_digest_acl

from _trim.errors import ConfigError, InvalidInput, StoreError
from signatures.configstore.errors import ConfigStoreUnavailable
from signatures.configstore.names import ZK_SCHEME
from signatures.configstore.zookeeper.settings import INSECURE_ENV, MAX_CHUNKS, ZooKeeperSettings

log = logging.getLogger("trimmer.store")
# kazoo says every failed reconnect attempt; `Ensemble` says a loss and a recovery once.
_kazoo_log = logging.getLogger("trimmer.store.kazoo")
_kazoo_log.setLevel(logging.ERROR)

# ZooKeeper refuses a request over jute.maxbuffer (1 MiB less one byte by
# default): a node's data stays under it with room for the path and ACLs.
NODE_BYTES = 1_000_000
INFLATE_STEP = 1 << 20
UNAVAILABLE = (ConnectionLoss, SessionExpiredError, ConnectionClosedError, KazooTimeoutError)
_insecure_said: set[str] = set()
# Permissions that let someone change what a node says or holds.
OPEN_PERMS = Permissions.WRITE | Permissions.CREATE | Permissions.DELETE | Permissions.ADMIN


def parse_address(address: str) -> tuple[str, str]:
    """(kazoo's host list, the chroot) of ``zk://H:P[,H:P...]/CHROOT``;
    ConfigError saying what is wrong."""
    rest = address[len(ZK_SCHEME):] if address.startswith(ZK_SCHEME) else ""
    hosts, _, chroot = rest.partition("/")
    problems = []
    for host in hosts.split(","):
        name, sep, port = host.rpartition(":")
        if not (sep and name and port.isdigit() and 0 < int(port) < 65536):
            problems.append(f"{host!r} is not HOST:PORT")
    parts = chroot.rstrip("/").split("/")
    if not chroot.strip("/") or any(p in ("", ".", "..", "zookeeper") for p in parts):
        problems.append("name a chroot, one per cluster (zk://HOST:PORT/trimmer/CLUSTER)")
    if problems:
        raise ConfigError(f"config store {address}: {'; '.join(problems)}")
    return hosts, "/" + "/".join(parts)


class Ensemble:
    def __init__(self, address: str, settings: ZooKeeperSettings | None = None):
        self.address = address
        self.hosts, self.chroot = parse_address(address)
        self.settings = settings or ZooKeeperSettings()
        credential = os.environ.get(self.settings.auth_env) or None
        if credential is not None and ":" not in credential:
            raise ConfigError(f"${self.settings.auth_env}: expected USER:PASSWORD (ZooKeeper's "
                              "digest scheme)")
        self.user = credential.split(":", 1)[0] if credential else None
        self._credential = credential
        if credential:
            user, password = credential.split(":", 1)
            # Readers may be open; only the writers' user may change what it wrote.
            self.acl = [make_acl("world", "anyone", read=True),
                        make_digest_acl(user, password, all=True)]
        else:
            self.acl = OPEN_ACL_UNSAFE
        self.timeout_s = self.settings.connect_timeout_s
        self.on_state: list[Callable[[str], None]] = []
        self.reconnected_at = 0.0   # monotonic time of the last reconnection (0: none yet)
        self._zk: KazooClient | None = None
        self._lock = threading.Lock()
        self._lost = False
        self._closing = False

    def describe(self) -> str:
        return f"ZooKeeper ensemble {self.hosts} (chroot {self.chroot})"

    def path(self, *parts: str) -> str:
        for p in parts:
            if not p or "/" in p or p in (".", ".."):
                raise InvalidInput(f"{p!r} is not a plain name")
        return "/".join((self.chroot, *parts))

    # -- the connection ------------------------------------------------------------------

    def client(self) -> KazooClient:
        """The connected client; ConfigStoreUnavailable when it is not."""
        with self._lock:
            if self._zk is None:
                self._zk = self._connect()
        if not self._zk.connected:
            raise ConfigStoreUnavailable(f"{self.describe()} is unreachable (reconnecting): "
                                         "nothing was read or changed")
        return self._zk

    def _connect(self) -> KazooClient:
        zk = KazooClient(hosts=self.hosts, timeout=self.settings.session_timeout_s,
                         connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2,
                                                     max_delay=1.0),
                         auth_data=[("digest", self._credential)] if self._credential else None,
                         default_acl=self.acl, logger=_kazoo_log)
        zk.add_listener(self._state_changed)
        try:
            zk.start(timeout=self.timeout_s)
        except (KazooTimeoutError, KazooException) as exc:
            zk.stop()
            zk.close()
            raise ConfigStoreUnavailable(
                f"{self.describe()}: no server answered within {self.timeout_s:g} s "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}); nothing was "
                "read or changed") from exc
        return zk

    def _state_changed(self, state) -> None:
        """kazoo's connection thread: say it, and tell the callbacks (which must not block)."""
        if self._closing:
            return
        if state == KazooState.CONNECTED:
            if self._lost:
                self.reconnected_at = time.monotonic()
                log.warning("%s: reconnected", self.describe())
            self._lost = False
        elif not self._lost:
            self._lost = True
            log.warning("%s: connection %s; serving what was installed, reconnecting",
                        self.describe(), "lost" if state == KazooState.SUSPENDED
                        else "and session lost")
        for callback in list(self.on_state):
            callback(state)

    @property
    def session(self):
        zk = self._zk
        return zk.client_id[0] if zk is not None and zk.client_id else None

    def close(self) -> None:
        with self._lock:
            zk, self._zk = self._zk, None
        if zk is not None:
            self._closing = True
            try:
                zk.stop()   # closes the session: ephemeral nodes go at once
            finally:
                zk.close()
                self._closing = False

    # -- requests ------------------------------------------------------------------------

    def call(self, what: str, make: Callable[[KazooClient], object]):
        """``make(client)`` returns an async result; its value, or the error
        mapped: ConfigStoreUnavailable when the ensemble does not answer,
        StoreError when it refuses (no permission), NoNodeError and
        NodeExistsError as they are (callers decide what those mean)."""
        try:
            return make(self.client()).get(timeout=self.timeout_s)   # type: ignore[attr-defined]
        except UNAVAILABLE as exc:
            raise ConfigStoreUnavailable(f"{self.describe()}: {what}: no answer "
                                         f"({type(exc).__name__}); nothing was changed") from exc
        except (NoAuthError, AuthFailedError) as exc:
            raise StoreError(f"{self.describe()}: {what}: not allowed (the credential in "
                             f"${self.settings.auth_env} "
                             f"{'is not a writer of this node' if self.user else 'is unset'})"
                             ) from exc
        except (NoNodeError, NodeExistsError):
            raise
        except KazooException as exc:
            raise StoreError(f"{self.describe()}: {what}: {type(exc).__name__} {exc}") from exc

    def get(self, path: str, what: str, watch=None):
        """(data, stat), or None when the node does not exist."""
        try:
            return self.call(what, lambda zk: zk.get_async(path, watch=watch))
        except NoNodeError:
            return None

    def children(self, path: str, what: str, watch=None) -> list[str] | None:
        try:
            return sorted(self.call(what, lambda zk: zk.get_children_async(path, watch=watch)))
        except NoNodeError:
            return None

    def get_many(self, paths: list[str], what: str) -> list:
        """(data, stat) or None for each path, fetched in parallel."""
        zk = self.client()
        return [_value(self, result, what) for result in [zk.get_async(p) for p in paths]]

    def check_writer(self, what: str) -> None:
        """StoreError unless this process may write: it has a credential, or
        open writes were asked for (``insecure``)."""
        if self._credential is None and self.settings.open_writes():
            # Said once, when this process first writes: a reader writes nothing.
            if self.address not in _insecure_said:
                _insecure_said.add(self.address)
                log.warning("INSECURE: %s without a credential ($%s unset), writes allowed "
                            "(zookeeper.insecure or $%s): the nodes written are open to anyone "
                            "who reaches the ensemble, who could change the config or register "
                            "leaves", self.describe(), self.settings.auth_env, INSECURE_ENV)
        elif self._credential is None:
            raise StoreError(f"{self.describe()}: {what}: refused: no credential "
                             f"(${self.settings.auth_env} unset), and the nodes written would "
                             "be open to anyone who reaches the ensemble; set "
                             f"${self.settings.auth_env}=USER:PASSWORD, or say insecure "
                             f"(zookeeper.insecure: true; ${INSECURE_ENV}=1 for the trimmer "
                             "commands) to accept that")

    def open_nodes(self, paths: list[str]) -> list[str]:
        """Those of ``paths`` (existing) whose ACL lets anyone who reaches the
        ensemble change them: written without a credential (insecure)."""
        zk = self.client()
        out = []
        for path, result in [(p, zk.get_acls_async(p)) for p in paths]:
            try:
                acls, _ = result.get(timeout=self.timeout_s)
            except NoNodeError:
                continue
            except (NoAuthError, KazooException):
                continue   # not readable here: not known to be open
            if any(acl.id.scheme == "world" and acl.id.id == "anyone" and acl.perms & OPEN_PERMS
                   for acl in acls):
                out.append(path)
        return out

    def create(self, path: str, data: bytes, what: str, ephemeral: bool = False) -> bool:
        """Create ``path`` (and its parents); False when it exists."""
        self.check_writer(what)
        try:
            self.call(what, lambda zk: zk.create_async(path, data, ephemeral=ephemeral,
                                                       makepath=True))
            return True
        except NodeExistsError:
            return False

    def ensure(self, *paths: str) -> None:
        self.check_writer(f"create {paths[0] if paths else ''}")
        for path in paths:
            def make(zk, p=path):
                return zk.ensure_path_async(p)
            self.call(f"create {path}", make)

    # -- blobs ---------------------------------------------------------------------------

    def put_blob(self, path: str, payload: bytes, what: str) -> None:
        """Store ``payload`` under ``path`` once (an existing node is kept:
        blobs are content-addressed)."""
        if self.get(path, what) is not None:
            return
        self.put_packed(path, zlib.compress(payload, 6), what, raw=len(payload))

    def put_packed(self, path: str, packed: bytes, what: str, raw: int | None = None) -> None:
        if len(packed) + 1 <= NODE_BYTES:
            self.create(path, b"Z" + packed, what)
            return
        most = min(self.settings.max_chunks * NODE_BYTES, self.settings.max_compressed_bytes)
        if len(packed) > most:
            raise StoreError(f"{what} is {len(packed)} bytes compressed"
                             f"{f' ({raw} bytes)' if raw else ''}: the ZooKeeper config store "
                             f"holds at most {most} bytes compressed "
                             f"({self.settings.max_chunks} nodes of {NODE_BYTES} bytes, "
                             "zookeeper.max_compressed_bytes); split the placement "
                             "into several bundles")
        digest = hashlib.sha256(packed).hexdigest()
        chunks = [packed[i:i + NODE_BYTES] for i in range(0, len(packed), NODE_BYTES)]
        for i, chunk in enumerate(chunks):
            self.create(self.path("chunks", digest, f"{i:04d}"), chunk, what)
        header = {"chunks": len(chunks), "sha256": digest, "bytes": len(packed)}
        self.create(path, b"C" + json.dumps(header).encode(), what)

    def get_blob(self, path: str, what: str) -> bytes | None:
        """The payload stored under ``path``; None when there is none;
        InvalidInput when it is damaged."""
        got = self.get(path, what)
        if got is None:
            return None
        data = got[0]
        s = self.settings
        try:
            if data[:1] == b"Z":
                packed = data[1:]
            elif data[:1] == b"C":
                header = json.loads(data[1:])
                chunks, nbytes = int(header["chunks"]), int(header["bytes"])
                if not 0 < chunks <= s.max_chunks:
                    raise InvalidInput(f"{what}: its node claims {chunks} chunks, over the "
                                       f"limit of {s.max_chunks} (zookeeper.max_chunks): "
                                       "refused unread")
                if not 0 < nbytes <= s.max_compressed_bytes:
                    raise InvalidInput(f"{what}: its node claims {nbytes} bytes compressed, "
                                       f"over the limit of {s.max_compressed_bytes} "
                                       "(zookeeper.max_compressed_bytes): refused unread")
                parts = self.get_many([self.path("chunks", header["sha256"], f"{i:04d}")
                                       for i in range(chunks)], what)
                if any(p is None for p in parts):
                    raise InvalidInput(f"{what}: a chunk is missing")
                packed = b"".join(p[0] for p in parts)
                if len(packed) != nbytes or hashlib.sha256(packed).hexdigest() != header["sha256"]:
                    raise InvalidInput(f"{what}: its chunks do not match their digest")
            else:
                raise InvalidInput(f"{what}: not a value this store wrote")
            if len(packed) > s.max_compressed_bytes:
                raise InvalidInput(f"{what}: {len(packed)} bytes compressed, over the limit of "
                                   f"{s.max_compressed_bytes} (zookeeper.max_compressed_bytes)")
            return _inflate(packed, s.max_inflated_bytes, what)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"{what}: damaged ({exc})") from exc


def _inflate(packed: bytes, limit: int, what: str) -> bytes:
    """``packed`` inflated, in steps, so that a stream inflating past
    ``limit`` is refused having held no more than ``limit`` (and a step)."""
    inflate = zlib.decompressobj()
    parts, total, tail = [], 0, packed
    while tail and not inflate.eof:
        part = inflate.decompress(tail, INFLATE_STEP)
        tail = inflate.unconsumed_tail
        total += len(part)
        if total > limit:
            raise InvalidInput(f"{what}: inflates past {limit} bytes "
                               "(zookeeper.max_inflated_bytes): refused")
        parts.append(part)
    if not inflate.eof:
        raise InvalidInput(f"{what}: damaged (its compressed stream is cut short)")
    return b"".join(parts)


def _value(ensemble: Ensemble, result, what: str):
    def already(_zk):
        return result
    try:
        return ensemble.call(what, already)
    except NoNodeError:
        return None


__all__ = ["Ensemble", "MAX_CHUNKS", "NODE_BYTES", "UNAVAILABLE", "parse_address"]
