"""A replica entering and leaving rotation, said once with the reason.

`LeafLink.out_reason` (rootproc/leaves/replicas.py) says why no new request
may go to a link now; `note_rotation` compares it with what was last said
and, on a change, logs it (a warning when the link leaves rotation, info
when it comes back) and calls the pool's ``on_rotation`` hook, which counts
it (trimmer_root_leaf_rotation_exits_total by reason,
trimmer_root_leaf_rotation_entries_total). A change while out (say from
`no_pong` to `connection_lost`) is logged but is no new exit.
"""
from __future__ import annotations

import logging

log = logging.getLogger("rootproc")

# Why a replica is out of rotation: the `reason` label values, and what the log says.
NOT_YET = "not_answered_yet"
CONNECTION_LOST = "connection_lost"
HANDSHAKE_FAILED = "handshake_failed"
DRAINING = "draining"
NO_PONG = "no_pong"
REASONS = {
    NOT_YET: "it has not answered a ping since it connected",
    CONNECTION_LOST: "connection lost (the leaf closed it, or its process is gone)",
    HANDSHAKE_FAILED: "handshake failed",
    DRAINING: "draining (its pong or a shutting_down reply said so)",
    NO_PONG: "no pong for {silent:.1f} s, nothing else heard from it, nothing of it unread here",
}


def note_rotation(links, now: float, timeout_s: float, on_rotation=None) -> None:
    """Log and count each link of ``links`` whose rotation changed since last noted."""
    for link in links:
        reason = link.out_reason(now, timeout_s)
        if reason == link.out:
            continue
        was, link.out = link.out, reason
        where = f"leaf {link.name} ({link.endpoint})"
        if reason is None:
            log.info("%s: %s rotation", where, "in" if was == NOT_YET else "back in")
        else:
            silent = now - max(link.unanswered_since or now, link.last_heard)
            why = REASONS[reason].format(silent=silent)
            if reason == HANDSHAKE_FAILED:
                why += f": {link.watch.problem}"
            if was is None:
                log.warning("%s: out of rotation: %s", where, why)
            else:
                log.info("%s: not in rotation, now because %s", where, why)
        if on_rotation is not None and (reason is None or was is None):
            on_rotation(link, reason)


__all__ = ["CONNECTION_LOST", "DRAINING", "HANDSHAKE_FAILED", "NOT_YET", "NO_PONG", "REASONS",
           "note_rotation"]
