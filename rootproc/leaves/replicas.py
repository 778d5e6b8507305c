"""Connections from the root to leaf replicas, their health and load.

One DEALER socket per replica endpoint, so that the root, not zmq's
round-robin, picks the replica: the healthy one with the fewest requests
outstanding. ``IMMEDIATE`` makes a send to a replica with no live connection
fail at once (then another replica is tried, or the model's result is
``unavailable``) instead of queueing behind a dead peer until the deadline;
zmq keeps reconnecting in the background, and the first pong after a leaf
restarts makes it healthy again.

A leaf with ``curve`` keys is reached over CURVE on its tcp endpoints. A
failed handshake never completes the connection, so sends fail at once as
above; the link's monitor says why in the log and in the root's pong, and a
link whose key or mechanism the leaf rejected (which libzmq does not retry)
is reconnected by hand every few seconds.

A link routes only what the process behind it said, in a pong, that it serves
ready: nothing before its first pong, and nothing again from the moment its
connection drops (a socket monitor says so) until the process that answers next
has ponged; whoever binds the endpoint after a crash is a new process with
nothing loaded yet. Pongs to pings sent before the drop are stale and ignored.
A pong saying ``"draining": true``, or a `shutting_down` reply
(rootproc/router.py), takes the replica out of rotation until a process behind
it says otherwise.

A live leaf stays in rotation however late the root's loop reads it: it
leaves only when silent (`LeafLink.silent`), a message waiting unread
counting as life unless the last one read answered nothing; each change is
logged once with the reason and counted (rootproc/leaves/rotation.py).

The set of links follows the config (`LeafPool.reconcile`, on the serving
loop between requests): leaves in the root's config file always, plus the
leaves the active bundle's placement gives an endpoint, plus, with a
ZooKeeper config store, the endpoints the leaves registered on the stage
publish (`rootproc/leaves/wanted.py`). A link no config names any more is *retiring*:
it takes no new request but stays open until the requests it carries are
answered or past their deadline (closed then, see `LeafLinks.reap_retired`
in rootproc/leaves/links.py).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from _trim.transport.curve import ClientKeys
from _trim.transport.frames import NOBLOCK, send_frames
from _trim.transport.model_key import is_model_key
from _trim.transport.monitor import LinkWatch
from _trim.transport.protocol import pack_header
from _trim.transport.sockets import connect_all, secured
from rootproc.defaults import LEAF_HWM, LEAF_RECONNECT_IVL_MAX_MS, LEAF_RECONNECT_IVL_MS
from rootproc.leaves import rotation as R
from rootproc.leaves.limits import message_limit
from rootproc.settings import LeafSpec

log = logging.getLogger("rootproc")


class LeafLink:
    """One replica endpoint of a named leaf."""

    def __init__(self, ctx: zmq.Context, name: str, endpoint: str, models, compression: str,
                 curve: ClientKeys | None = None):
        self.name = name
        self.endpoint = endpoint
        self.configured = frozenset(models)
        # What the process behind the endpoint says it serves ready; empty until
        # it says (see the module docstring). None: its pongs list no models,
        # and the placement stands in.
        self.reported: frozenset | None = frozenset()
        self.draining = False    # the process said it is shutting down
        self.retiring = False
        self.drain_until = float("inf")  # a retiring link closes by then at the latest
        self.hashes: dict = {}   # model version -> signature hash the leaf reports
        self.compression = compression
        self.outstanding = 0
        self.last_pong = float("-inf")
        self.last_heard = float("-inf")   # a reply naming a request, read by the loop
        self.unanswered_since: float | None = None   # oldest ping sent since the last pong
        # Whether what waits unread may be an answer: the last message read
        # from the leaf was one (a leaf sending only noise earns no credit).
        self.answered_last = True
        self.lost = False        # the connection dropped; no pong since
        self.out: str | None = R.NOT_YET   # why it is out of rotation (None: in rotation)
        self.pid = None
        self.max_message_bytes: int | None = None   # what its pongs say it accepts (limits.py)
        self.sub_feature_columns = self.grouped_columns = False   # its pongs say it takes them
        self._next_ping = 0
        self._pong_floor = 0     # pings numbered below were sent on a connection that dropped
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.SNDHWM, LEAF_HWM)
        self.socket.setsockopt(zmq.RCVHWM, LEAF_HWM)
        self.socket.setsockopt(zmq.RECONNECT_IVL, LEAF_RECONNECT_IVL_MS)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, LEAF_RECONNECT_IVL_MAX_MS)
        self.curve = curve if curve is not None and secured(endpoint) else None
        try:
            # Watched whatever the transport: a dropped connection must be seen
            # (and, with CURVE, why a handshake failed).
            self.watch = LinkWatch(self.socket, f"leaf {name} ({endpoint})",
                                   self.curve.public if self.curve is not None else None)
        except BaseException:
            self.socket.close(linger=0)
            raise
        try:
            connect_all(self.socket, [endpoint], self.curve)
        except BaseException:
            self.close()
            raise

    @property
    def models(self) -> frozenset:
        # Once the leaf has said what it serves, only the versions it says are
        # ready: during a rollout the placement runs ahead of (or behind) the leaf.
        return self.configured if self.reported is None else self.reported

    def healthy(self, now: float, timeout_s: float) -> bool:
        """Alive and answering (draining or not: see `routable`)."""
        return self.out_reason(now, timeout_s) in (None, R.DRAINING)

    def silent(self, now: float, timeout_s: float) -> bool:
        """Asked and silent ``timeout_s``: a ping unanswered, nothing heard, nothing
        unread here (what the busy root has not read never counts against it,
        unless the last message read from the leaf answered nothing)."""
        since = self.unanswered_since
        if since is None or now - max(since, self.last_heard) <= timeout_s:
            return False
        if not self.answered_last:
            return True
        try:
            return not self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
        except zmq.ZMQError:
            return True

    def out_reason(self, now: float, timeout_s: float) -> str | None:
        """Why no new request may go here (a `REASONS` key), or None."""
        if self.last_pong == float("-inf"):
            if self.watch.problem is not None:
                return R.HANDSHAKE_FAILED
            return R.CONNECTION_LOST if self.lost else R.NOT_YET
        if self.draining:
            return R.DRAINING
        return R.NO_PONG if self.silent(now, timeout_s) else None

    def heard(self, now: float) -> None:
        """A reply naming a request was read: a sign of life, as good as a pong."""
        self.last_heard = now
        self.answered_last = True

    def ignored(self) -> None:
        """A message that answers nothing was read (a pong to no ping of ours or
        of another protocol version, a reply naming no request): until an
        answer is read, what waits unread is no sign of life."""
        self.answered_last = False

    def routable(self, key: str) -> bool:
        """Whether a new request for ``key`` may go here."""
        return not self.draining and key in self.models

    def send(self, frames) -> bool:
        """False when the replica has no live connection or its queue is full."""
        try:
            send_frames(self.socket, frames, NOBLOCK)
            return True
        except zmq.Again:
            return False

    def ping(self) -> None:
        n, self._next_ping = self._next_ping, self._next_ping + 1
        if self.send([pack_header({"type": "ping", "id": f"ping-{n}"})]) \
                and self.unanswered_since is None:
            self.unanswered_since = time.monotonic()

    def watch_connection(self, now: float) -> bool:
        """Act on the connection's events: a drop forgets what the process
        behind it said, a new connection is pinged at once (it routes from its
        pong on); reconnect by hand when libzmq will not by itself. Whether
        the connection dropped."""
        dropped, up = self.watch.poll(now)
        if dropped:
            self.reported, self.hashes, self.draining = frozenset(), {}, False
            self.last_pong, self.unanswered_since = float("-inf"), None
            self.lost = True
            self._pong_floor = self._next_ping
            log.info("leaf %s (%s): connection lost; no traffic until the process behind it "
                     "answers a ping", self.name, self.endpoint)
        if up:
            self.ping()
        if self.watch.due(now):
            try:
                self.socket.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # already gone
            self.socket.connect(self.endpoint)
        return dropped

    def on_pong(self, header: dict, now: float) -> None:
        ping_id = header.get("id")
        n = ping_id[len("ping-"):] if isinstance(ping_id, str) and ping_id.startswith("ping-") \
            else ""
        if not (n.isascii() and n.isdigit() and len(n) <= 18) or int(n) < self._pong_floor:
            self.ignored()
            return  # not one of ours, or asked of a connection that has dropped since
        self.last_pong, self.unanswered_since, self.lost = now, None, False
        self.answered_last = True
        # A pong is foreign input (leaves may be written in any language): fields
        # of the wrong type are dropped, not used as pids or compared as hashes.
        pid = header.get("pid")
        usable = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 1 << 31
        self.pid = pid if usable else None
        self.draining = header.get("draining") is True
        self.max_message_bytes = message_limit(header)
        self.sub_feature_columns = header.get("sub_feature_columns") is True   # takes reads
        self.grouped_columns = header.get("grouped_columns") is True   # takes groups
        models = header.get("models")
        if isinstance(models, list):
            # Ready only when it says so: an entry without `"ready": true` is
            # a version still loading, or one it cannot say it serves.
            ready = [m for m in models if isinstance(m, dict) and is_model_key(m.get("model"))
                     and m.get("ready") is True]
            self.reported = frozenset(m["model"] for m in ready)
            self.hashes = {m["model"]: m.get("signature_hash") for m in ready
                           if isinstance(m.get("signature_hash"), str)}
        else:
            # The placement stands in for what it serves, and no hash is an
            # agreement: nothing of it is trimmed.
            self.reported, self.hashes = None, {}

    def close(self) -> None:
        self.watch.close(self.socket)
        self.socket.close(linger=0)


def load_curve(leaf) -> ClientKeys | None:
    """The CURVE client keys for a leaf's tcp endpoints (reads the key files)."""
    curve = getattr(leaf, "curve", None)
    if curve is None:
        return None
    return ClientKeys.load(curve.server_public_key, curve.client_secret_key,
                           f"root config: leaf {leaf.name!r}: curve")


class LeafPool:
    def __init__(self, ctx: zmq.Context, leaves, placement: dict, default_compression: str,
                 health_timeout_s: float):
        self.ctx = ctx
        self.default_compression = default_compression
        self.links: list[LeafLink] = []      # routed to
        # Told of a link whose connection dropped (the router: what it carried is lost).
        self.on_drop: Callable[[LeafLink], None] | None = None
        self.retiring: list[LeafLink] = []   # no new requests; closed once drained
        self.by_socket: dict = {}
        self.leaves: dict[str, LeafSpec] = {}   # leaf name -> its config (transport, models)
        self.health_timeout_s = health_timeout_s
        # Called with (link, reason or None) as a link leaves or rejoins rotation.
        self.on_rotation: Callable[[LeafLink, str | None], None] | None = None
        # Every key file is read before any socket exists: a bad one fails the start cleanly.
        keys = {leaf.name: load_curve(leaf) for leaf in leaves}
        self._link_up(leaves, placement, keys, starting=True)
        self.leaves = {leaf.name: leaf for leaf in leaves}

    def _link_up(self, leaves, placement: dict, keys: dict, starting: bool) -> list[LeafLink]:
        """Links to the endpoints of ``leaves`` not linked yet (a retiring one is
        taken back). At start a link that cannot be made fails the start; while
        serving it is logged and skipped, the leaf's other links still made."""
        have = {(link.name, link.endpoint): link for link in self.links + self.retiring}
        added: list[LeafLink] = []
        for leaf in leaves:
            for ep in leaf.endpoints:
                link = have.get((leaf.name, ep))
                if link is not None:
                    if link.retiring:
                        link.retiring, link.drain_until = False, float("inf")
                        self.retiring.remove(link)
                        self.links.append(link)
                        log.info("leaf %s (%s): named again; no longer retiring", leaf.name, ep)
                    continue
                try:
                    link = LeafLink(self.ctx, leaf.name, ep,
                                    leaf.models or placement.get(leaf.name, ()),
                                    leaf.compression or self.default_compression,
                                    keys.get(leaf.name))
                except Exception as exc:
                    if starting:   # fail the start, closing what was made
                        for made in added:
                            made.close()
                        raise
                    log.error("leaf %s: cannot link to %s: %s", leaf.name, ep, exc)
                    continue
                self.links.append(link)
                self.by_socket[link.socket] = link
                added.append(link)
                log.info("leaf %s: linked to %s", leaf.name, ep)
            if keys.get(leaf.name) is not None:
                log.info("leaf %s: CURVE on its tcp endpoints; this root's public key %s",
                         leaf.name, keys[leaf.name].public.decode("ascii"))
        return added

    def reconcile(self, leaves, placement: dict, drain_until: float):
        """Make the links match ``leaves`` (see `wanted_leaves`): new endpoints
        get a link, links to endpoints no leaf names any more start retiring
        (closed by the caller once drained, by ``drain_until`` at the latest).
        Returns (added, retired) links."""
        leaves = list(leaves)
        have = {(link.name, link.endpoint) for link in self.links + self.retiring}
        keys, usable = {}, []
        for leaf in leaves:
            if any((leaf.name, ep) not in have for ep in leaf.endpoints):
                try:
                    keys[leaf.name] = load_curve(leaf)
                except Exception as exc:  # a bad key file costs that leaf, not the root
                    log.error("leaf %s: not linked: %s", leaf.name, exc)
                    continue
            usable.append(leaf)
        added = self._link_up(usable, placement, keys, starting=False)
        wanted = {(leaf.name, ep) for leaf in leaves for ep in leaf.endpoints}
        retired = [link for link in self.links if (link.name, link.endpoint) not in wanted]
        for link in retired:
            link.retiring, link.drain_until = True, drain_until
            log.info("leaf %s (%s): no config names it; retiring (%d request(s) in flight)",
                     link.name, link.endpoint, link.outstanding)
        if retired:
            self.links = [link for link in self.links if not link.retiring]
            self.retiring.extend(retired)
        self.leaves = {leaf.name: leaf for leaf in leaves}
        for link in self.links:
            leaf = self.leaves.get(link.name)
            if leaf is not None:
                link.configured = frozenset(leaf.models or placement.get(link.name, ()))
        return added, retired

    def forget(self, link: LeafLink) -> None:
        """Close a retiring link for good."""
        self.retiring.remove(link)
        del self.by_socket[link.socket]
        link.close()

    def transport(self, link: LeafLink) -> str:
        leaf = self.leaves.get(link.name)
        return leaf.transport if leaf is not None else "auto"

    def hosted(self) -> set[str]:
        return set().union(*(link.models for link in self.links))

    def refresh(self, now: float) -> None:
        """Note each link's entering or leaving rotation (rootproc/leaves/rotation.py)."""
        R.note_rotation(self.links, now, self.health_timeout_s, self.on_rotation)

    def candidates(self, key: str, now: float) -> list[LeafLink]:
        """Healthy replicas a request for ``key`` may go to, least outstanding
        first. One out of rotation (`LeafLink.out_reason`) gets no request:
        its model's result is ``unavailable`` at once, not a deadline."""
        self.refresh(now)
        links = [link for link in self.links
                 if link.routable(key) and link.healthy(now, self.health_timeout_s)]
        links.sort(key=lambda link: link.outstanding)
        return links

    def ping_all(self) -> None:
        now = time.monotonic()
        for link in self.links + self.retiring:
            if link.watch_connection(now) and self.on_drop is not None:
                self.on_drop(link)
            link.ping()

    def status(self, now: float, describe=None) -> list[dict]:
        """One entry per link; ``describe(link)`` adds fields of its own (the
        transport the link's batches take)."""
        self.refresh(now)   # what it reports has been logged and counted
        out = []
        for link in self.links + self.retiring:
            entry = {"leaf": link.name, "endpoint": link.endpoint,
                     "healthy": link.healthy(now, self.health_timeout_s),
                     "outstanding": link.outstanding, "models": sorted(link.models), "pid": link.pid}
            if describe is not None:
                entry.update(describe(link))
            if link.max_message_bytes is not None:
                entry["max_message_bytes"] = link.max_message_bytes
            for flag in ("sub_feature_columns", "grouped_columns", "draining", "retiring"):
                if getattr(link, flag):
                    entry[flag] = True
            if link.curve is not None:
                entry.update(curve=True, handshake_error=link.watch.problem)
            out.append(entry)
        return out

    def close(self) -> None:
        for link in self.links + self.retiring:
            link.close()


__all__ = ["LeafLink", "LeafPool"]
