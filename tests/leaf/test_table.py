"""The leaf's model table as a state machine, with stand-in workers: a new
version serves once warm, an old one retires only after its replacement
serves and answers through its grace period, a failed successor leaves the
old one serving, a fixed list serves at once. The same rollout through real
processes is tests/rollout; these pin the table's rules one by one.
"""

from __future__ import annotations

from leafproc.metrics import LeafMetrics, RolloutMetrics
from leafproc.table import ModelTable, Target
from signatures.runtime.handoff import Handoff


class Info:
    def __init__(self, key):
        self.key = key
        self.signature_hash = "h"


class FakeWorker:
    def __init__(self, path, info):
        self.key = info.key
        self.info = info
        self.ready = False
        self.error = None
        self.alive = False
        self.stopped = 0
        self.model = object()

    def start(self):
        self.alive = True

    def stop(self):
        self.stopped += 1

    def join(self, timeout=None):
        pass

    def is_alive(self):
        return self.alive

    def describe(self):
        d = {"model": self.key, "signature_hash": "h", "ready": self.ready}
        if self.error:
            d["error"] = self.error
        return d


def table(stage="canary", grace=1.0):
    m = LeafMetrics()
    made = {}

    def mk(path, info):
        made[info.key] = w = FakeWorker(path, info)
        return w

    t = ModelTable(
        name="l",
        make_worker=mk,
        metrics=m,
        rollout=RolloutMetrics(m.registry),
        stage=stage,
        retire_grace_s=grace,
    )
    return t, made


def tgt(gen, *keys, bad=()):
    return Target(keys, {k: (f"/{k}", Info(k)) if k not in bad else "nope" for k in keys}, gen, "b")


def test_replacement_first_then_retire_after_grace():
    t, made = table()
    assert t.update(0.0, tgt(1, "ctr@3")) is True
    assert t.worker("ctr@3") is None and t.describe()[0]["state"] == "loading"
    made["ctr@3"].ready = True
    assert t.update(0.1)
    assert t.worker("ctr@3") is made["ctr@3"]
    assert not t.update(0.2)  # settled
    t.update(1.0, tgt(2, "ctr@5"))
    assert t.worker("ctr@3") is not None  # old serves while new loads
    assert "ctr@3" not in t.record(["e"]).retiring
    made["ctr@5"].ready = True
    t.update(1.1)
    rec = t.record(["e"])
    assert rec.retiring == ("ctr@3",) and rec.models == ("ctr@5",) and rec.generation == 2
    assert t.worker("ctr@3") is not None  # still answering during grace
    t.update(2.0)
    assert t.worker("ctr@3") is not None
    t.update(2.2)
    assert t.worker("ctr@3") is None and made["ctr@3"].stopped == 1
    made["ctr@3"].alive = False
    t.update(2.3)
    assert made["ctr@3"].model is None
    assert not t.update(2.4)
    assert t.pong_fields() == {"stage": "canary", "generation": 2, "config": "b"}


def test_failed_successor_keeps_old():
    t, made = table()
    t.update(0.0, tgt(1, "ctr@3"))
    made["ctr@3"].ready = True
    t.update(0.1)
    t.update(1.0, tgt(2, "ctr@7"))
    made["ctr@7"].error = "failed to load or warm up: boom"
    t.update(1.1)
    for now in (2, 5, 10):
        t.update(now)
    assert t.worker("ctr@3") is not None
    d = {x["model"]: x for x in t.describe()}
    assert d["ctr@7"]["state"] == "failed" and "ctr@3" in t.keys()
    assert dict(t.record([]).failed) == {"ctr@7": "failed to load or warm up: boom"}
    t.update(11, tgt(3, "ctr@3", "ctr@8", bad=("ctr@8",)))
    assert "ctr@7" not in dict(t.record([]).failed) and "ctr@8" in dict(t.record([]).failed)


def test_fixed_list_serves_at_once_and_failure_stays():
    t, made = table(stage=None)
    t.update(0.0, Target.fixed([("/a", Info("a@1")), ("/b", Info("b@1"))]))
    assert t.worker("a@1") is made["a@1"] and t.keys() == ["a@1", "b@1"]
    made["b@1"].error = "failed"
    assert not t.update(1.0)
    assert t.worker("b@1") is not None and t.pong_fields() == {}
    assert [d.get("state") for d in t.describe()] == [None, None]


def test_wanted_back_while_retiring_keeps_serving():
    t, made = table()
    t.update(0, tgt(1, "a@1"))
    made["a@1"].ready = True
    t.update(0.1)
    t.update(1, tgt(2))
    t.update(1.1)
    assert t.record([]).retiring == ("a@1",)
    t.update(1.5, tgt(3, "a@1"))
    t.update(5)
    assert t.worker("a@1") is not None and t.record([]).retiring == ()


def test_handoff_newest_once():
    h = Handoff()
    assert h.take() is None
    h.put(1)
    h.put(2)
    assert h.take() == 2 and h.take() is None


def test_readiness_is_every_target_version_warm_and_none_failed():
    t, made = table()
    assert t.readiness() == (False, "no models from stage canary yet")
    t.update(0.0, tgt(1, "ctr@3", "eng@1"))
    ready, why = t.readiness()
    assert not ready and why == "ctr@3 loading; eng@1 loading"
    made["ctr@3"].ready = True
    t.update(0.1)
    assert t.readiness() == (False, "eng@1 loading")
    made["eng@1"].ready = True
    t.update(0.2)
    assert t.readiness() == (True, "serving ctr@3, eng@1 (stage canary, generation 1)")
    t.update(0.3, tgt(2, "ctr@4", "eng@1", bad=("ctr@4",)))   # its successor fails
    ready, why = t.readiness()
    assert not ready and why == "ctr@4 failed: nope", why
    assert t.worker("ctr@3") is made["ctr@3"]   # still serving meanwhile


def test_a_fixed_list_is_ready_once_its_workers_warmed_up():
    t, made = table(stage=None)
    t.update(0.0, Target.fixed([("/a", Info("ctr@3"))]))
    assert t.readiness() == (False, "ctr@3 loading")   # serving, not warm yet
    made["ctr@3"].ready = True
    assert t.readiness() == (True, "serving ctr@3")
