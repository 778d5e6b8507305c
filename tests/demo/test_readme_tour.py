"""The README's quick tour runs as written."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def tour_script() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour -->\s*```bash\n(.*?)```\s*<!-- /tour -->", readme, re.S)
    assert block, "README.md has no tour block"
    return block.group(1)


def test_readme_tour_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("TRIMMER_CONFIG_STORE", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", tour_script()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "models" / "ctr" / "2" / "module_info.json").exists()
    assert (tmp_path / "savings.png").stat().st_size > 5_000
    assert "saving" in done.stdout
    # after the rollback, production is back on bundle-1
    bundle_1 = re.search(r'"id":\s*"([^"]+)"', (tmp_path / "bundle-1.json").read_text()).group(1)
    status = done.stdout[done.stdout.rindex("production:"):]
    assert bundle_1 in status.splitlines()[0]
