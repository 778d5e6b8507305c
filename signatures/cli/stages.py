"""trimmer deploy / deploy-models / promote / rollback / status: the staged config store.

``--config-store`` is a directory or ``zk://HOST:PORT[,HOST:PORT...]/CHROOT``
(`open_config_store`, signatures/configstore/__init__.py); what each command checks
and writes is the stage policy (signatures/configstore/stages.py). With ZooKeeper the
writer's credential comes from ``$TRIMMER_ZK_AUTH`` (signatures/configstore/zookeeper/settings.py)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from _trim.errors import TrimmerError
from signatures.bundle import Bundle
from signatures.configstore import STAGES, ConfigStore, Stages, open_config_store
from signatures.configstore.gating import WAIT_S
from signatures.configstore.stage_state import HEADINGS
from signatures.runtime.exit_codes import EXIT_FAILED, exit_for, exit_for_disk

MULTI_COMMAND = True
DEFAULT_STORE = os.environ.get("TRIMMER_CONFIG_STORE", "config-store")


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"trimmer {command}")
    p.add_argument("--config-store", default=DEFAULT_STORE, metavar="DIR|zk://HOSTS/CHROOT",
                   help="config store: a directory, or a ZooKeeper ensemble "
                        "zk://HOST:PORT[,HOST:PORT...]/CHROOT (default: $TRIMMER_CONFIG_STORE "
                        "or ./config-store)")
    if command == "deploy":
        p.description = "Put a bundle on a stage as its root config."
        p.add_argument("bundle")
        p.add_argument("--stage", required=True, choices=STAGES)
        p.add_argument("--force", action="store_true",
                       help="even if models on the stage are missing from the bundle (logged)")
    elif command == "deploy-models":
        p.description = ("Put model versions on a stage for its leaves. The stage's active root "
                         "config must already carry each version, and every live root of the "
                         "stage must run a config carrying it (config before models).")
        p.add_argument("models", nargs="+", metavar="NAME@VERSION")
        p.add_argument("--stage", required=True, choices=STAGES)
        p.add_argument("--replace", action="store_true",
                       help="the stage runs exactly these versions (default: add them)")
        p.add_argument("--repo", help="model repository (a directory or an object store URL, "
                                      "s3://BUCKET/PREFIX): also check each version's "
                                      "signature hash against the config's")
        p.add_argument("--wait", type=float, default=WAIT_S, metavar="SECONDS",
                       help="how long to wait for every live root of the stage to install a "
                            f"config carrying the versions (default {WAIT_S:g})")
        p.add_argument("--force", action="store_true",
                       help="emergencies only: neither the config nor the roots are waited "
                            "for; logged, with what was skipped")
    elif command == "promote":
        p.description = "Copy one stage's active config and models to another."
        p.add_argument("src", choices=STAGES)
        p.add_argument("dst", choices=STAGES)
    elif command == "rollback":
        p.description = ("Return a stage to what it served before its active config: that "
                         "config and the model versions the stage ran with it, in the safe "
                         "order (models the old config lacks leave while the current one is "
                         "live, waiting for the leaves; then the config; then the models only "
                         "the old config carries, once the roots run it). Prints each step.")
        p.add_argument("stage", choices=STAGES)
        p.add_argument("--wait", type=float, default=WAIT_S, metavar="SECONDS",
                       help="how long to wait for the stage's live leaves, then roots, to "
                            f"catch up between the steps (default {WAIT_S:g})")
        p.add_argument("--force", action="store_true",
                       help="emergencies only: make every step without waiting (logged)")
    elif command == "status":
        p.description = ("What each stage runs, and who is on it. Exit status 1 when a stage's "
                         "record is lost or corrupt (what the audit log says it ran is shown).")
        p.add_argument("--json", action="store_true")
    return p


def _signatures(repo_root, keys) -> dict[str, str]:
    from _trim.transport.model_key import ModelKey
    from signatures.repository import open_repository
    repo = open_repository(repo_root)
    return {k: repo.info((mk := ModelKey(k)).name, mk.version).signature_hash for k in keys}


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    args = _parser(command).parse_args(rest)
    logging.basicConfig(level=logging.WARNING, format="trimmer: %(levelname)s %(message)s")
    try:
        with open_config_store(args.config_store) as store:
            return _run(command, args, store)
    except TrimmerError as exc:
        return exit_for(command, exc)
    except OSError as exc:   # the directory store's disk: full, read-only, not ours
        return exit_for_disk(command, f"config store {args.config_store}", exc)


def _run(command: str, args, store: ConfigStore) -> int:
    stages = Stages(store)
    if command == "deploy":
        bundle = Bundle.load(args.bundle)
        gen = stages.deploy(bundle, args.stage, force=args.force)
        print(f"{args.stage}: config {bundle.id} active (generation {gen})")
    elif command == "deploy-models":
        sigs = _signatures(args.repo, args.models) if args.repo else None
        models = stages.deploy_models(args.stage, args.models, force=args.force,
                                      replace=args.replace, signatures=sigs, wait_s=args.wait)
        print(f"{args.stage}: models {', '.join(models) or '(none)'} "
              f"(generation {store.generation(args.stage)})")
    elif command == "promote":
        gen = stages.promote(args.src, args.dst)
        _, promoted = store.active(args.dst)
        assert promoted is not None   # promote refuses a stage without a config
        print(f"{args.dst}: config {promoted.id} and models "
              f"{', '.join(store.active_models(args.dst)) or '(none)'} from {args.src} "
              f"(generation {gen})")
    elif command == "rollback":
        done = stages.rollback(args.stage, wait_s=args.wait, force=args.force)
        print(f"{args.stage}: rolled back to config {done.bundle} (from {done.previous}), "
              f"generation {done.generation}")
        print(f"  models: {', '.join(done.models_before) or '(none)'} -> "
              f"{', '.join(done.models) or '(none)'}"
              f"{'' if done.models_known else ' (the record did not say which ran before)'}")
        for i, step in enumerate(done.steps, 1):
            print(f"  {i}. {step}")
        if done.uncovered:
            print(f"warning: {', '.join(done.uncovered)} on {args.stage} are not in that "
                  "config; roots send them every feature until it is fixed", file=sys.stderr)
    elif command == "status":
        status = stages.status()
        insecure = store.insecure_nodes()
        warning = (f"INSECURE: {len(insecure)} node(s) of {store.address} are writable by "
                   f"anyone who reaches it (written without a credential, insecure): "
                   f"{', '.join(insecure)}; anyone could change the config or register "
                   "leaves. Write the store with a credential ($TRIMMER_ZK_AUTH=USER:PASSWORD) "
                   "and set its nodes' ACLs (docs/operations.md, \"Config store\")"
                   if insecure else None)
        if args.json:
            print(json.dumps(status, indent=1))
        else:
            print(f"config store {store.address}")
            if warning:
                print(f"*** {warning} ***")
            print(format_status(status))
        if warning:
            print(f"trimmer status: {warning}", file=sys.stderr)
        broken = [f"{stage}: {st['error']}" for stage, st in status.items() if st.get("error")]
        if broken:
            print("trimmer status: " + "; ".join(broken), file=sys.stderr)
            return EXIT_FAILED
    return 0


def format_status(status: dict) -> str:
    lines = []
    for stage, st in status.items():
        summary = (f"generation {st['generation']}, config {st['bundle'] or '(none)'}"
                   f" (updated {st['updated'] or 'never'}), {len(st['history'])} earlier")
        if st.get("problem"):
            lines.append(f"{stage}: {HEADINGS[st['problem']]} stage record: {st['error']}")
            lines.append(f"  the audit log says: {summary}" if st.get("recovered") else
                         "  the audit log says nothing about it")
            lines.append(f"  `trimmer rollback {stage}` or `trimmer deploy BUNDLE --stage "
                         f"{stage}` writes a new record from it; members keep what they run")
        else:
            lines.append(f"{stage}: {summary}")
            if st.get("error"):
                lines.append(f"  ERROR: {st['error']}")
        lines.append(f"  models: {', '.join(st['models']) or '(none)'}")
        if st["uncovered"]:
            lines.append(f"  NOT IN CONFIG: {', '.join(st['uncovered'])}")
        for m in st["members"]:
            marks = []
            if m.get("generation") not in (None, st["generation"]):
                marks.append("BEHIND")
            if not m.get("live", True):
                marks.append("STALE")
            on = "on it" if m.get("bundle") == st["bundle"] else f"on {m.get('bundle') or '(none)'}"
            gen = m.get("generation")
            # An ephemeral record (ZooKeeper) is rewritten only when it changes:
            # its session, not its age, says the member is alive.
            seen = (f"session open, record from {m['age_s']:.0f}s ago" if m.get("ephemeral")
                    else f"last seen {m['age_s']:.0f}s ago")
            lines.append(f"  {m['role']} {m['name']}: {on}, generation {'?' if gen is None else gen}, "
                         f"{m.get('host')} pid {m.get('pid')}, {seen}"
                         f"{'  (' + ', '.join(marks) + ')' if marks else ''}")
            if m.get("endpoints"):
                lines.append(f"    endpoints: {', '.join(m['endpoints'])}")
            if m.get("models"):
                lines.append(f"    serving: {', '.join(m['models'])}")
            for what in ("loading", "retiring"):
                if m.get(what):
                    lines.append(f"    {what}: {', '.join(m[what])}")
            for key, error in sorted((m.get("failed") or {}).items()):
                lines.append(f"    FAILED {key}: {error}")
            for key, reason in sorted((m.get("trim_gaps") or {}).items()):
                count = (m.get("trim_gap_counts") or {}).get(key)
                lines.append(f"    trim gap: {key} ({reason}; sent every feature"
                             f"{f', {count} requests' if count else ''})")
            if m.get("leaves"):  # a root's leaf links
                lines.append("    leaves: " + ", ".join(
                    f"{link.get('leaf')} {link.get('endpoint')}"
                    f"{' (shm)' if link.get('transport') == 'shm' else ''}"
                    f"{' (retiring)' if link.get('retiring') else ''}"
                    f"{' (draining)' if link.get('draining') else ''}"
                    f"{'' if link.get('healthy') else ' (DOWN)'}" for link in m["leaves"]))
            if m.get("last_error"):
                lines.append(f"    config error: {m['last_error']}")
    return "\n".join(lines)
