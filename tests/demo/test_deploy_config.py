"""deploy/ is a configuration people copy: it must load, and its stop
timeouts must leave room for the drains they exist for."""
import json
import shlex
from pathlib import Path

from supervisor.options import ServerOptions

from leafproc.__main__ import parse_args as parse_leaf_args
from rootproc.settings import load_config

DEPLOY = Path(__file__).parents[2] / "deploy"


def load_supervisord(tmp_path, path=DEPLOY / "supervisord.conf"):
    text = path.read_text()
    text = text.replace("/run/trimmer", str(tmp_path)).replace("/var/log/trimmer", str(tmp_path))
    conf = tmp_path / path.name
    conf.write_text(text)
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return {p.name: p for g in options.process_group_configs for p in g.process_configs}


def test_supervisord_config_loads_with_roots_and_leaves(tmp_path):
    programs = load_supervisord(tmp_path)
    assert sorted(programs) == ["leaf-0", "leaf-1", "root-0", "root-1", "root-2", "root-3"]
    leaf_drain = json.loads((DEPLOY / "leaf.json").read_text())["drain_timeout_s"]
    root_drain_s = json.loads((DEPLOY / "root.json").read_text())["max_deadline_ms"] / 1000
    for name, p in programs.items():
        argv = shlex.split(p.command)
        assert argv[1] == name.split("-")[0] and f"--name {name}" in p.command
        assert p.stopsignal == 15
        assert p.stopwaitsecs > (leaf_drain if name.startswith("leaf") else root_drain_s)
    assert min(programs[f"leaf-{i}"].priority for i in range(2)) < programs["root-0"].priority


def test_root_and_leaf_configs_are_valid(tmp_path):
    cfg = load_config(DEPLOY / "root.json").validate()
    assert cfg.config_store and cfg.stage == "production" and cfg.trim == "on"
    assert {leaf.name for leaf in cfg.leaves} == {"leaf-0", "leaf-1", "gpu-a"}
    args = parse_leaf_args(["--config", str(DEPLOY / "leaf.json"), "--bind", f"ipc://{tmp_path}/l.sock"])
    assert args.repo == "/var/lib/trimmer/models" and args.drain_timeout_s == 30
    assert args.config_store == cfg.config_store and args.stage == cfg.stage  # both follow one stage


def program_settings(program, tmp_path, configs: Path = DEPLOY):
    """The settings a supervisord program starts with: its command line, with
    ``--config /etc/trimmer/X.json`` read from ``configs`` (deploy/)."""
    import argparse

    from leafproc.settings import LeafSettings
    from rootproc.settings import RootSettings
    from signatures.runtime.settings import add_arguments, load

    argv = shlex.split(program.command)
    cls = RootSettings if argv[1] == "root" else LeafSettings
    argv = [str(configs / Path(a).name) if a.startswith("/etc/trimmer/") and a.endswith(".json")
            else a for a in argv[2:]]
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    if cls is RootSettings:
        parser.add_argument("--log-level")
    return load(cls, parser.parse_args(argv))


def test_the_shipped_shape_is_secure(tmp_path):
    """What people copy binds nothing reachable without authentication, serves
    metrics on loopback, and needs no `insecure`."""
    from _trim.transport.sockets import is_loopback

    for name, program in load_supervisord(tmp_path).items():
        settings = program_settings(program, tmp_path)   # the full check, as at start
        assert not settings.insecure, name
        assert is_loopback(f"tcp://{settings.metrics_addr}:1"), (name, settings.metrics_addr)
        reachable = [ep for ep in settings.bind if ep.startswith("tcp://") and not is_loopback(ep)]
        if reachable:
            assert settings.curve is not None and settings.curve.secret_key, name
            assert settings.curve.authorized not in (None, "*"), name
    for path in ("root.json", "leaf.json", "leaf-remote.json"):
        data = json.loads((DEPLOY / path).read_text())
        assert data.get("metrics_addr") == "127.0.0.1", path   # explicit, not left to a default
    remote = json.loads((DEPLOY / "leaf-remote.json").read_text())
    assert remote["curve"]["authorized"] not in (None, "*")
    settings = parse_leaf_args(["--config", str(DEPLOY / "leaf-remote.json")])
    assert settings.bind == ("tcp://0.0.0.0:5560",) and not settings.insecure


FLEET = DEPLOY / "fleet"


def fleet_programs(tmp_path, conf: str) -> dict:
    return load_supervisord(tmp_path, FLEET / conf)


def test_the_fleet_example_follows_one_zookeeper_stage_and_names_no_endpoint(tmp_path,
                                                                            monkeypatch):
    """deploy/fleet/: root hosts and GPU hosts coordinated through ZooKeeper.
    Everything parses and validates as at start, every process follows the
    same ensemble, chroot and stage, leaves are found (no endpoint in a root
    config or the placement), and the shape is secure (CURVE, no insecure)."""

    from _trim.transport.sockets import is_loopback
    from leafproc.settings import LeafSettings
    from rootproc.settings import RootSettings
    from signatures.configstore.zookeeper.ensemble import parse_address

    # What supervisord's environment gives every program (never the files):
    # without it a zk:// follower refuses to start.
    monkeypatch.setenv("TRIMMER_ZK_AUTH", "deployer:example")
    monkeypatch.delenv("TRIMMER_ZK_INSECURE", raising=False)
    roots = fleet_programs(tmp_path, "supervisord-root-host.conf")
    leaves = fleet_programs(tmp_path, "supervisord-gpu-host.conf")
    assert sorted(roots) == [f"root-{i}" for i in range(4)]
    assert sorted(leaves) == ["leaf-0", "leaf-1"]
    follows = set()
    for name, program in {**roots, **leaves}.items():
        settings = program_settings(program, tmp_path, FLEET)   # the full check, as at start
        follows.add((settings.config_store, settings.stage, settings.zookeeper.auth_env))
        assert not settings.insecure and settings.curve is not None, name
        assert settings.curve.authorized not in (None, "*"), name
        assert is_loopback(f"tcp://{settings.metrics_addr}:1"), name
        assert program.stopwaitsecs > (30 if isinstance(settings, LeafSettings) else 10), name
        if isinstance(settings, RootSettings):
            assert settings.leaves == () and settings.bundle is None, name
        else:
            assert settings.name == "gpu-a" and settings.bind[0].startswith("tcp://0.0.0.0:")
    ((address, stage, auth_env),) = follows
    assert parse_address(address) == ("zk-1.internal:2181,zk-2.internal:2181,zk-3.internal:2181",
                                      "/trimmer/prod-east")
    assert stage == "production" and auth_env == "TRIMMER_ZK_AUTH"
    placement = json.loads((FLEET / "placement.json").read_text())
    assert "gpu-a" in placement["leaves"]
    assert not any("endpoint" in leaf for leaf in placement["leaves"].values())
    assert "TRIMMER_ZK_AUTH" not in (FLEET / "supervisord-root-host.conf").read_text().split(
        "[program:")[1]   # the credential is never in the file
