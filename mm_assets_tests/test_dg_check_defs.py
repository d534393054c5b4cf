"""`dg check defs` (Dagster's current CLI, dagster-dg-cli) loads the project through
`[tool.dg]` in pyproject.toml: the same definitions `workspace.yaml` and `dagster dev` load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_dg_check_defs_loads_the_definitions(tmp_path: Path) -> None:
    dg = Path(sys.executable).parent / "dg"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "NO_COLOR": "1"}
    done = subprocess.run(
        [str(dg), "check", "defs"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "All definitions loaded successfully" in done.stdout + done.stderr
