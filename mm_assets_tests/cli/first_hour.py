"""What a new user runs in the first hour, run as they run it: the `mm-assets` command and the
demo's scripts as subprocesses, the sandbox as its own process on ephemeral ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MM_ASSETS = Path(sys.executable).with_name("mm-assets")
# Generous: CI's two cores are busy; only a hang reaches these.
START_TIMEOUT = 120
COMMAND_TIMEOUT = 900
EPHEMERAL_PORTS = {
    "MM_SANDBOX_SFTP_PORT": "0",
    "MM_SANDBOX_CFT_PORT": "0",
    "MM_SANDBOX_PROCESSING_LOG_PORT": "0",
}


def user_env(root: Path, **extra: str) -> dict[str, str]:
    """A user's environment: everything under `root` (instance, work, outbox, sandbox), the
    project's dagster.yaml in DAGSTER_HOME, the sandbox on ephemeral ports."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    env = {
        "PATH": f"{MM_ASSETS.parent}:/usr/bin:/bin",
        "HOME": str(root),
        "DAGSTER_HOME": str(home),
        "MM_ASSETS_WORK_DIR": str(root / "work"),
        "MM_ASSETS_OUTBOX_DIR": str(root / "outbox"),
        "MM_SANDBOX_STATE_DIR": str(root / "sandbox"),
        **EPHEMERAL_PORTS,
    }
    env.update(extra)
    return env


def mm_assets(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MM_ASSETS), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


@dataclass
class RunningSandbox:
    process: subprocess.Popen[str]
    state_dir: Path

    @property
    def state(self) -> dict[str, object]:
        return json.loads((self.state_dir / "sandbox.json").read_text())


@contextmanager
def sandbox_process(env: dict[str, str], state_dir: Path) -> Iterator[RunningSandbox]:
    """`mm-assets sandbox` in its own process, until the block ends (then SIGTERM)."""
    log = (state_dir.parent / f"{state_dir.name}.log").open("w")
    process = subprocess.Popen(
        [str(MM_ASSETS), "sandbox", "--state-dir", str(state_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (state_dir / "sandbox.json").exists():
            assert process.poll() is None, (state_dir.parent / f"{state_dir.name}.log").read_text()
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.2)
        yield RunningSandbox(process, state_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def demo_sandbox_step(env: dict[str, str], state_dir: Path) -> subprocess.CompletedProcess[str]:
    """The demo's sandbox step (scripts/demo_sandbox.sh, as demo.sh sources it); prints the
    pid of a sandbox it started on its last line (`started=` when it started none)."""
    script = 'source scripts/demo_sandbox.sh; ensure_sandbox "$1" "$2"; echo "started=$sandbox_pid"'
    return subprocess.run(
        ["bash", "-c", script, "demo", str(state_dir), str(state_dir.parent / "demo_sandbox.log")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def stop_process(pid: int) -> None:
    """Stop a process this test started indirectly (by its pid) and wait until it is gone."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (an orphan that has exited but is not reaped yet is a zombie: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
