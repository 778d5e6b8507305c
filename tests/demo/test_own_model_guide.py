"""docs/own-model.md runs as written: its files written where it names them,
its commands in order, in an empty directory, with a real leaf and root."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
STEP = re.compile(r"<!-- guide: (file (\S+)|run) -->\s*```\w*\n(.*?)```", re.S)


def guide_steps() -> list[tuple[str | None, str]]:
    """(path, text) for each file, (None, script) for each command block, in order."""
    text = (ROOT / "docs" / "own-model.md").read_text()
    return [(m.group(2), m.group(3)) for m in STEP.finditer(text)]


def test_the_guide_has_every_step():
    steps = guide_steps()
    files = {path for path, _ in steps if path}
    assert {"shop/schema.json", "shop/model.py", "shop/placement.json", "shop/users.jsonl",
            "shop/make_candidates.py", "shop/score.py"} <= files
    script = "\n".join(body for path, body in steps if path is None)
    for command in ("trimmer export", "trimmer bundle build", "trimmer store load", "trimmer leaf",
                    "trimmer root", "python shop/score.py"):
        assert command in script, command


def test_the_guide_runs_as_written(tmp_path):
    script = []
    for path, body in guide_steps():
        if path is None:
            script.append(body)
        else:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(body)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("TRIMMER_CONFIG_STORE", None)
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        # The script stops its leaf and root itself; whatever is left of its session goes.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, out[-3000:] + err[-4000:]
    info = json.loads((tmp_path / "models" / "shop_ctr" / "1" / "module_info.json").read_text())
    assert "user_recent_items" not in json.dumps(info)
    scores = re.search(r"scores: \[([^\]]*)\]", out)
    assert scores and len(scores.group(1).split()) == 10, out
    assert "trimmed: True" in out, out
    assert "missing: 2" in out, out
    assert "root healthy" in out
    assert not (tmp_path / "root.sock").exists() and not (tmp_path / "leaf-0.sock").exists()
