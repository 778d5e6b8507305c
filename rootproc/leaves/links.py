"""The root's leaf links as the serving loop runs them.

`LeafLinks` owns the link pool (rootproc/leaves/replicas.py), each link's
shared-memory ring (rootproc/leaves/shm.py), the links' places in the loop's
poller (each link's socket and its connection monitor) and their gauges.
Each installed config brings the links in line with it (`reconcile`), and
so does each change of the leaves registered in a ZooKeeper store
(`discover`: endpoints from membership, rootproc/rollout/follower.py); the
ping tick pings them, reclaims slots of dead leaf processes and closes
retired links once drained (`tick`); a link's connection events are acted
on as they come (`on_monitor`: a dropped connection stops its traffic, a new
one is pinged at once).
"""
from __future__ import annotations

import logging

import zmq

from _trim.transport.shm import reap_stale_segments
from rootproc.leaves.replicas import LeafLink, LeafPool
from rootproc.leaves.shm import ShmLinks
from rootproc.leaves.wanted import wanted_leaves
from signatures.configstore.members import LinkStatus

log = logging.getLogger("rootproc")


class LeafLinks:
    def __init__(self, ctx: zmq.Context, cfg, active, metrics, poller: zmq.Poller):
        self.cfg = cfg
        self.metrics = metrics
        self.poller = poller
        self.active = active
        self.discovered: dict | None = None   # leaf name -> endpoints, where membership says
        # The root config's leaves, and those the bundle's placement gives an endpoint.
        leaves = wanted_leaves(cfg.leaves, active)
        self.pool = LeafPool(ctx, leaves, active.placement, cfg.compression,
                             cfg.health_timeout_ms / 1000)
        self.pool.on_rotation = self._rotation_changed
        reap_stale_segments()
        try:
            self.shm = ShmLinks(self.pool.links, cfg.shm, {leaf.name: leaf.transport for leaf in leaves},
                                metrics.registry)
        except BaseException:
            self.pool.close()
            raise
        self.monitors: dict = {}   # a link's monitor socket -> the link
        for link in self.pool.links:
            self._watch(link)

    def _watch(self, link: LeafLink) -> None:
        self.poller.register(link.socket, zmq.POLLIN)
        self.poller.register(link.watch.monitor, zmq.POLLIN)
        self.monitors[link.watch.monitor] = link

    def _rotation_changed(self, link: LeafLink, reason: str | None) -> None:
        if reason is None:
            self.metrics.rotation_entries.labels(link.name).inc()
        else:
            self.metrics.rotation_exits.labels(link.name, reason).inc()

    def by_socket(self, sock) -> LeafLink:
        return self.pool.by_socket[sock]

    def on_monitor(self, sock, now: float) -> bool:
        """Act on the connection events of the link whose monitor ``sock`` is;
        False when ``sock`` is no monitor."""
        link = self.monitors.get(sock)
        if link is None:
            return False
        if link.watch_connection(now) and self.pool.on_drop is not None:
            self.pool.on_drop(link)
        return True

    def discover(self, fleet: dict, now: float) -> None:
        """The leaves registered now (name -> (endpoints, CURVE key)): link to new ones,
        retire those no longer there (as `reconcile`)."""
        self.discovered = fleet
        self.reconcile(self.active, now)

    def reconcile(self, active, now: float) -> None:
        """Link to leaves ``active`` (or membership) adds; retire links
        neither names any more. A retiring link takes no new request;
        requests it carries finish or reach their deadline (all of them by
        ``max_deadline_ms`` from now) before `reap_retired` closes it."""
        self.active = active
        secret = self.cfg.curve.secret_key if self.cfg.curve is not None else None
        leaves = wanted_leaves(self.cfg.leaves, active, self.pool, self.discovered, secret)
        added, _ = self.pool.reconcile(leaves, active.placement,
                                       now + self.cfg.max_deadline_ms / 1000)
        for link in added:
            self._watch(link)
            try:
                self.shm.add(link, self.pool.transport(link))
            except Exception as exc:  # no ring: the link still works over its socket
                log.error("leaf %s (%s): no shared-memory ring: %s", link.name, link.endpoint, exc)
            # Pinged now, not at the next tick: routing waits for its first pong.
            link.ping()
        self.reap_retired(now)

    def tick(self, now: float) -> None:
        """The ping tick: pings, slots of dead leaves back, retired links closed, gauges."""
        self.pool.ping_all()
        self.pool.refresh(now)
        self.shm.check_leaves()
        self.reap_retired(now)
        for link in self.pool.links:
            up = link.healthy(now, self.pool.health_timeout_s)
            self.metrics.leaf_up.labels(link.name, link.endpoint).set(1 if up else 0)
            self.metrics.leaf_outstanding.labels(link.name, link.endpoint).set(link.outstanding)

    def reap_retired(self, now: float) -> None:
        """Close retiring links with nothing left in flight and no shared-memory
        slot the leaf may still read, or past the last deadline they carried."""
        for link in list(self.pool.retiring):
            drained = link.outstanding <= 0 and not self.shm.holds(link)
            if not (drained or now >= link.drain_until):
                continue
            if not drained:
                log.warning("leaf %s (%s): closing a retired link with %d request(s) past their "
                            "deadline", link.name, link.endpoint, link.outstanding)
            self.poller.unregister(link.socket)
            self.poller.unregister(link.watch.monitor)
            del self.monitors[link.watch.monitor]
            self.shm.remove(link)
            self.pool.forget(link)
            for gauge in (self.metrics.leaf_up, self.metrics.leaf_outstanding):
                try:
                    gauge.remove(link.name, link.endpoint)
                except KeyError:
                    pass
            log.info("leaf %s (%s): retired link closed", link.name, link.endpoint)

    def status(self, now: float) -> list[dict]:
        """One entry per link, for the root's pong."""
        return self.pool.status(now, self.shm.describe)

    def records(self, now: float) -> tuple[LinkStatus, ...]:
        """The links as the root's heartbeat lists them."""
        return tuple(LinkStatus(link["leaf"], link["endpoint"], link["healthy"], link["transport"],
                                bool(link.get("retiring")), bool(link.get("draining")))
                     for link in self.status(now))

    def close(self) -> None:
        self.pool.close()
        self.shm.close()


__all__ = ["LeafLinks"]
