"""What both backends promise alike: the same records from the same data, metadata last."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _trim.records.layout import SOURCES
from rootproc.client import loadgen as score
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore import create_feature_store, open_feature_store
from signatures.schema import FeatureSchema
from tests.root.world import SCHEMA, raw_data

from .redis_server import RedisServer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    users, cands = raw_data()
    (base / "schema.json").write_text(json.dumps(SCHEMA))
    np.savez(base / "users.npz", **users)
    with open(base / "cands.jsonl", "w") as f:
        for i, cid in enumerate(cands["id"]):
            row = {"id": int(cid)}
            for name, col in cands.items():
                if name.endswith(".values"):
                    base_name = name[:-len(".values")]
                    lo, hi = cands[base_name + ".offsets"][i:i + 2]
                    row[base_name] = col[lo:hi].tolist()
                elif not name.endswith(".offsets") and name != "id":
                    row[name] = col[i].tolist()
            f.write(json.dumps(row) + "\n")
    return base


@pytest.fixture(params=["lmdb", "redis"])
def address(request, tmp_path, module_redis_server):
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return module_redis_server.url(f"t-{tmp_path.name[-40:]}".replace("[", "-").replace("]", ""))


def load(address, files, *extra) -> int:
    return store_cli.main(["load", "--feature-store", address, "--schema", str(files / "schema.json"),
                           "--users", str(files / "users.npz"),
                           "--candidates", str(files / "cands.jsonl"), "--no-progress", *extra])


def test_load_reads_back_the_same_records_from_either_backend(files, address, tmp_path):
    assert load(address, files) == 0
    lmdb_dir = str(tmp_path / "reference")
    assert load(lmdb_dir, files) == 0
    users, cands = raw_data()
    ids = [int(cands["id"][7]), -5, int(cands["id"][0]), int(cands["id"][-1])]
    with open_feature_store(address) as store, open_feature_store(lmdb_dir) as reference:
        assert store.layouts.keys() == set(SOURCES)
        got = store.get_many({"user": [int(users["id"][2]), 999], "candidate": ids})
        want = reference.get_many({"user": [int(users["id"][2]), 999], "candidate": ids})
        assert got == want and got["candidate"][1] is None and got["user"][1] is None
        assert store.count("candidate") == len(cands["id"]) and store.count("user") == len(users["id"])
        assert store.id_range("candidate") == (int(cands["id"][0]), int(cands["id"][-1]))
        out = store.layout("candidate").decode_many([got["candidate"][0]])
        np.testing.assert_array_equal(out["pin_emb"][0], cands["pin_emb"][7])
        assert store.info()["schema_fingerprint"] == FeatureSchema.from_dict(SCHEMA).fingerprint


def test_synth_writes_identical_records_to_both_backends(files, address, tmp_path):
    argv = ["synth", "--schema", str(files / "schema.json"), "--users", "30", "--candidates",
            "500", "--seed", "5", "--no-progress"]
    assert store_cli.main(argv[:1] + ["--feature-store", address] + argv[1:]) == 0
    assert store_cli.main(argv[:1] + ["--feature-store", str(tmp_path / "ref")] + argv[1:]) == 0
    with open_feature_store(address) as a, open_feature_store(str(tmp_path / "ref")) as b:
        wanted = {"user": list(range(30)), "candidate": list(range(500))}
        assert a.get_many(wanted) == b.get_many(wanted)


def test_a_half_loaded_store_is_refused_and_a_reload_adds_to_it(files, address):
    schema = FeatureSchema.load(files / "schema.json")
    store = create_feature_store(address, schema)
    store.put_many("user", [1, 2, 3], store.layout("user").encode_many(3, {}))
    store.close()                                  # died before its metadata
    with pytest.raises(ValueError, match="first load has not finished"):
        open_feature_store(address)
    # Run again (what the first one left counts too), then an overlapping reload.
    for ids in ([7], [3, 4, 4]):
        with create_feature_store(address, schema) as store:
            store.put_many("user", ids, store.layout("user").encode_many(len(ids), {}))
    with open_feature_store(address) as store:
        assert store.count("user") == 5 and store.id_range("user") == (1, 7)
        assert store.count("candidate") == 0 and store.id_range("candidate") is None
        assert store.get("user", [4, 5])[1] is None


def test_a_store_refuses_records_of_another_schema(files, address):
    assert load(address, files) == 0
    other = dict(SCHEMA, features=[f for f in SCHEMA["features"] if f["name"] != "user_age"])
    with pytest.raises(ValueError, match="different schema; load into a new"):
        create_feature_store(address, FeatureSchema.from_dict(other))
    with open_feature_store(address) as store:    # left as it was
        assert store.count("user") == len(raw_data()[0]["id"])


def test_info_and_score_read_either_backend(files, address, capsys):
    assert load(address, files) == 0
    capsys.readouterr()
    assert store_cli.main(["info", "--feature-store", address]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == ("redis" if address.startswith("redis") else "lmdb")
    assert info["candidate"]["count"] == 300 and info["user"]["id_range"] == [100, 109]
    args = type("Args", (), {"feature_store": address})()
    assert score.id_space(args) == ((100, 109), (1000, 1299))


def test_load_reports_records_per_second(files, address, capsys):
    assert load(address, files) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 10 user records, 300 candidate records" in line and "records/s" in line
    assert "password" not in line


def test_redis_stores_on_one_server_stay_apart(files, module_redis_server):
    """Two namespaces (and two databases) of one server: loads and schemas apart."""
    a, b = module_redis_server.url("apart-a"), module_redis_server.url("apart-b")
    c = module_redis_server.url("apart-a", db=3)
    assert load(a, files) == 0
    other = dict(SCHEMA, features=[f for f in SCHEMA["features"] if f["name"] != "pin_unused"])
    (files / "other.json").write_text(json.dumps(other))
    assert store_cli.main(["synth", "--feature-store", b, "--schema", str(files / "other.json"),
                           "--users", "3", "--candidates", "4", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="never loaded"):
        open_feature_store(c)
    with open_feature_store(a) as sa, open_feature_store(b) as sb:
        assert sa.count("candidate") == 300 and sb.count("candidate") == 4
        assert "pin_unused" in sa.layout("candidate") and "pin_unused" not in sb.layout("candidate")
        assert sb.get("candidate", [1000])[0] is None and sa.get("candidate", [1000])[0] is not None


def test_redis_addresses_are_checked(module_redis_server):
    port = module_redis_server.port
    for bad, message in [(f"redis://127.0.0.1:{port}/x", "database number"),
                         (f"redis://127.0.0.1:{port}/0?namespace=a:b", "namespace 'a:b'"),
                         (f"redis://127.0.0.1:{port}/0?prefix=a", "unknown parameters"),
                         ("redis://127.0.0.1:notaport/0", "port is not a number"),
                         ("redis:///0", "no host")]:
        with pytest.raises(ValueError, match=message):
            open_feature_store(bad)


def test_redis_password_from_the_url_or_the_environment(tmp_path, files, monkeypatch):
    server = RedisServer(tmp_path, password="s3cret-pw").start()
    try:
        url = server.url("pw")
        secret_url = url.replace("redis://", "redis://:s3cret-pw@")
        assert load(secret_url, files) == 0
        with pytest.raises(ValueError) as refused:
            open_feature_store(url)
        assert "s3cret-pw" not in str(refused.value)
        monkeypatch.setenv("TRIMMER_REDIS_PASSWORD", "s3cret-pw")
        with open_feature_store(url) as store:
            assert store.count("candidate") == 300 and "s3cret-pw" not in store.address
        with pytest.raises(ValueError) as wrong:
            open_feature_store(url.replace("redis://", "redis://:wrong-pw@"))
        assert "wrong-pw" not in str(wrong.value) and "s3cret" not in str(wrong.value)
        # What docs/operations.md suggests for roots: a read-only user for one namespace.
        assert server.command("ACL", "SETUSER", "reader", "on", ">rpw", "~pw:*", "+get",
                              "+mget", "+exists", "+strlen") == b"+OK"
        monkeypatch.delenv("TRIMMER_REDIS_PASSWORD")
        reader = url.replace("redis://", "redis://reader:rpw@")
        with open_feature_store(reader) as store:
            assert store.get("candidate", [1000])[0] is not None
        with pytest.raises(ValueError, match="no permissions"):
            open_feature_store(reader.replace("namespace=pw", "namespace=other"))
    finally:
        server.stop()
