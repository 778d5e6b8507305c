"""Root ↔ leaf agreement: which version a request gets, and whether it may be trimmed.

During a rollout the root's config and the leaves' loaded models change at
different moments, so neither is the truth alone. A version is *served* when
a healthy leaf's pong says it is ready; the root routes only to those. A
version is trimmed only when the active config has its signature and every
leaf that may receive it reports that signature's hash in its pong: one that
reports another hash, or none, gets every feature (fail open) and the
version counts as a trim gap, because a trimmed batch that lacks a feature
the leaf's model reads would fail every request.
"""
from __future__ import annotations

import logging

from _trim.transport.model_key import ModelKey
from signatures.repository.module_info import version_sort_key

log = logging.getLogger("rootproc")

NOT_IN_CONFIG = "not in config"
NO_CONFIG_HASH = "no signature hash in config"


def served_versions(pool, now: float) -> frozenset:
    """Versions some healthy leaf replica, not draining, says it serves ready."""
    out: set[str] = set()
    for link in pool.links:
        if link.healthy(now, pool.health_timeout_s) and not link.draining:
            out |= link.models
    return frozenset(out)


def resolve(active, name: str, served: frozenset) -> str | None:
    """``NAME`` -> a version: one a healthy leaf serves before one none does,
    then one the config knows (so it can be trimmed), then current before
    pending, then the highest version. None when neither side knows ``name``."""
    candidates = {k for k in active.models if ModelKey(k).name == name}
    candidates |= {k for k in served if ModelKey(k).name == name}
    if not candidates:
        return None
    return max(candidates, key=lambda k: (k in served, k in active.models, k not in active.pending,
                                          version_sort_key(ModelKey(k).version), k))


def replacement(active, key: str, named, served: frozenset, taken) -> str | None:
    """The version to send in place of ``key``, which a request was resolved
    to and no replica serves any more (it left rotation while the request's
    features were fetched: a rollout or rollback retired it), or None: the
    version its model name resolves to now, when the request did not name
    ``key`` itself (``named``: its ``models``, None for the default set), a
    replica serves that one, and the request does not score it already
    (``taken``). Rule score.model-name, applied again when the request is sent."""
    if key in served or (named is not None and key in named):
        return None
    other = resolve(active, ModelKey(key).name, served)
    return other if other is not None and other in served and other not in taken else None


def default_models(active, served: frozenset) -> list[str]:
    """A request without ``models``: every current version of the config, each
    replaced by a served version of the same model when no leaf serves it
    (mid-rollout the config may name a version the leaves have not loaded yet,
    or have already unloaded)."""
    out: list[str] = []
    for key in active.default_models:
        chosen = key if key in served else resolve(active, ModelKey(key).name, served)
        if chosen is not None and chosen not in out:
            out.append(chosen)
    return out


class Agreement:
    """Decides trim gaps and says so, loudly but once per disagreement."""

    def __init__(self, root_name: str):
        self.root_name = root_name
        self._warned: set = set()

    def gap_reason(self, active, key: str, links) -> str | None:
        """None when ``key`` may be trimmed for ``links`` (the replicas it may
        go to): the config has its signature and every one of them reports
        the same signature hash. No hash, on either side, is no agreement."""
        if active.features_for(key) is None:
            return NOT_IN_CONFIG
        want = active.hashes.get(key)
        if not isinstance(want, str) or not want:
            return NO_CONFIG_HASH
        for link in links:
            have = link.hashes.get(key)
            if have is None:
                reason = f"no signature hash from {link.name}"
                self._warn_once((active.id, link.name, key, None), "%s: leaf %s (%s) reports no "
                                "signature hash for %s; sending it every feature (trim gap) "
                                "until its pong carries one", self.root_name, link.name,
                                link.endpoint, key, level=logging.WARNING)
                return reason
            if have != want:
                self._warn_once((active.id, link.name, key, have), "%s: SIGNATURE MISMATCH for "
                                "%s: leaf %s (%s) serves signature %s but config %s says %s; "
                                "sending it every feature (trim gap) until they agree",
                                self.root_name, key, link.name, link.endpoint, have[:12],
                                active.id, want[:12])
                return f"signature mismatch on {link.name}"
        return None

    def _warn_once(self, tag, *args, level=logging.ERROR) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            log.log(level, *args)

    def current_gaps(self, active, pool) -> dict:
        """version -> reason, for every version a leaf serves that cannot be trimmed now."""
        out = {}
        for link in pool.links:
            for key in sorted(link.models):
                if key not in out:
                    reason = self.gap_reason(active, key, [link])
                    if reason:
                        out[key] = reason
        return out


__all__ = ["Agreement", "NOT_IN_CONFIG", "NO_CONFIG_HASH", "default_models", "replacement",
           "resolve", "served_versions"]
