"""A lightweight root for bench/test_fleet_bench.py: a root's config path
and nothing else.

It reads the stage's config as a root does at start, then runs the root's own
follower (rootproc/rollout/follower.py: the store's watch or poll, the bundle read and
validated, preprocessors and trim plans compiled by `prepare_config`) and a
loop that installs each prepared config the way the serving loop does
(`take_config` after each turn of at most MAX_POLL_MS, as an idle root) and posts the root's heartbeat. Each
install is printed as ``installed GENERATION MONOTONIC_TIME`` (the clock is
the machine's, the same in every process). It stops when its stdin closes.

    python bench/fleet_root.py STORE_ADDRESS STAGE NAME SCHEMA
"""
from __future__ import annotations

import functools
import os
import selectors
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _trim.records.layout import RecordLayout  # noqa: E402
from rootproc.defaults import MAX_POLL_MS  # noqa: E402
from rootproc.rollout.follower import ConfigFollower  # noqa: E402
from rootproc.rollout.installed import ActiveConfig, prepare_config  # noqa: E402
from signatures.configstore import open_config_store  # noqa: E402
from signatures.configstore.members import HEARTBEAT_S, MemberStatus  # noqa: E402
from signatures.schema import FeatureSchema  # noqa: E402


class Counter:
    def inc(self) -> None:
        print("config error", flush=True)


def main(address: str, stage: str, name: str, schema_path: str) -> None:
    schema = FeatureSchema.load(schema_path)
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    prepare = functools.partial(prepare_config, schema, layouts, "on")
    with open_config_store(address) as store:
        generation, bundle = store.active(stage)
    prepared = prepare(ActiveConfig.from_bundle(bundle, generation))
    follower = ConfigFollower(address, stage, name=name, prepared=prepared, prepare=prepare,
                              errors=Counter(), schema=schema).start()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(f"ready {generation}", flush=True)
    next_beat = 0.0
    try:
        while True:
            if sel.select(MAX_POLL_MS / 1000) and not sys.stdin.readline():
                return
            now = time.monotonic()
            new = follower.take_config()
            if new is not None:
                prepared = new
                print(f"installed {new.active.generation} {time.monotonic():.6f}", flush=True)
                next_beat = 0.0
            if now >= next_beat:
                follower.post_heartbeat(MemberStatus(
                    "root", name, generation=prepared.active.generation, bundle=prepared.active.id,
                    schema=schema.fingerprint))
                next_beat = now + HEARTBEAT_S
    finally:
        follower.stop()


if __name__ == "__main__":
    main(*sys.argv[1:5])
