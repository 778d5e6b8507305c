"""The staged config store's storage interface: which bundle and which model
versions each stage runs, and who runs what.

`signatures.configstore.open_config_store(address)` opens the backend its
address names:

- a directory path: `signatures/configstore/directory.py`, the embedded default (one
  node, tests, the demo);
- ``zk://HOST:PORT[,HOST:PORT...]/CHROOT``: `signatures/configstore/zookeeper/store.py`, a
  ZooKeeper ensemble, for a fleet.

Both hold the same things (stages, content-addressed bundles, the feature
schemas roots publish, the audit log, members' records) and give the same
guarantees: every change of a stage is one atomic step, made against the
record it read, so concurrent writers serialise and never lose an update; a
writer killed at any moment leaves the previous state active and readable;
``generation`` grows by one with every change of a stage.

A backend supplies the reads, `_atomically` (run a change against what it
read, commit it with its audit entry in one step) and membership. What a
change of a stage is (`deploy`, `deploy-models`, `promote`, `rollback`: what
they check and write) is the policy in signatures/configstore/stages.py,
the same over every backend.

A stage record that is lost, unreadable or corrupt is an error for every
reader (`state`; signatures/configstore/stage_state.py), never an empty
stage: followers keep serving what they had.
"""
from __future__ import annotations

from collections.abc import Callable

from signatures.bundle import Bundle
from signatures.configstore.changes import Change, Changes
from signatures.configstore.members import STALE_S, MemberStatus
from signatures.configstore.stage_state import StageProblem


class ConfigStore:
    """The interface; `signatures.configstore.open_config_store` gives a backend's instance."""

    # Where members' records are ephemeral (they vanish with their process):
    # roots then link to the leaves they find registered (rootproc/rollout/follower.py),
    # and a member may call `heartbeat` as often as it likes (only changes
    # are written).
    ephemeral_members = False

    address: str

    # -- the backend -------------------------------------------------------------------

    def read_stage(self, stage: str) -> dict | StageProblem:
        """The stage's record, or what is wrong with it."""
        raise NotImplementedError

    def recovered(self, stage: str) -> dict | None:
        """What the audit log says the stage's record held; None if it says nothing."""
        raise NotImplementedError

    def stage_stamp(self, stage: str):
        """A token that changes whenever the stage's record is replaced; None
        while the stage has no record."""
        raise NotImplementedError

    def bundle(self, bundle_id: str) -> Bundle:
        raise NotImplementedError

    def schema(self, fingerprint: str):
        """A feature schema a root published (`publish_schema`), or None."""
        raise NotImplementedError

    def publish_schema(self, schema) -> None:
        """Put the feature schema a root runs into the store (once per
        fingerprint), for `deploy` to check bundles against."""
        raise NotImplementedError

    def heartbeat(self, stage: str, record: MemberStatus) -> None:
        """Record that ``record``'s member (e.g. root root-0) is alive on
        ``stage``, and what it runs."""
        raise NotImplementedError

    def members(self, stage: str) -> list[MemberStatus]:
        """The members' last records on ``stage``, by role and name."""
        raise NotImplementedError

    def log_entries(self) -> list[dict]:
        """The audit log, oldest first."""
        raise NotImplementedError

    def changes(self, stage: str, poll_s: float) -> Changes:
        """What a follower of ``stage`` waits on (see `Changes`)."""
        return Changes(poll_s)

    def close(self) -> None:
        """Let go of connections; a member's records go with it where they are ephemeral."""

    def member_watch(self, stage: str, wake: Callable[[], None]):
        """The leaves registered on ``stage``, kept current (`ephemeral_members` only)."""
        raise NotImplementedError

    def reconnected_at(self) -> float:
        """Monotonic time this process last reconnected to the store (0: never lost it)."""
        return 0.0

    def insecure_nodes(self) -> list[str]:
        """Where the store is open: what anyone who reaches it may change
        (`trimmer status` says it loudly). None known by default."""
        return []

    def is_live(self, member: MemberStatus) -> bool:
        """Whether ``member`` is still there (its records are recent)."""
        return member.age_s() <= STALE_S

    # -- writing: for the policy (signatures/configstore/stages.py), not its callers -------

    def _write_bundle(self, bundle: Bundle) -> None:
        """Put ``bundle`` into the store (content-addressed: once), before a
        stage names it."""
        raise NotImplementedError

    def _atomically(self, change: Callable[[], Change]) -> tuple[int, object]:
        """Run ``change`` and commit what it returns, with its audit entry, in
        one step that fails if a stage it read changed meanwhile (then it is
        run again); (the new generation, its result)."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -----------------------------------------------------------------------

    def state(self, stage: str) -> dict:
        """The stage's record; the empty one for a stage never written.
        StoreError when it is lost, unreadable or corrupt."""
        record = self.read_stage(stage)
        if isinstance(record, StageProblem):
            raise record.error(stage)
        return record

    def generation(self, stage: str) -> int:
        """Grows with every change of the stage."""
        return int(self.state(stage)["generation"])

    def active(self, stage: str) -> tuple[int, Bundle | None]:
        st = self.state(stage)
        return int(st["generation"]), (self.bundle(st["bundle"]) if st["bundle"] else None)

    def active_models(self, stage: str) -> list[str]:
        return list(self.state(stage)["models"])

    def history(self, stage: str) -> list[str]:
        """Bundle ids this stage ran before its active one, oldest first."""
        return list(self.state(stage)["history"])

    def live_members(self, stage: str, role: str | None = None) -> list[MemberStatus]:
        return [m for m in self.members(stage)
                if (role is None or m.role == role) and self.is_live(m)]


__all__ = ["ConfigStore"]
