"""A run `mm-assets build` / `deliver` executes in its own process has no run worker watching
it: when that process dies (kill -9), the run would stay STARTED and hold its batch (the
`dagster/partition` run limit, and "in progress" for the delivery automation). The reaper
fails such runs, and only those."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg

from mm_assets.cli import main
from mm_assets.defs.alerts.sensors import fail_runs_of_dead_commands as reaper_sensor
from mm_assets.defs.launch import (
    COMMAND_HOST_TAG,
    COMMAND_PROCESS_TAG,
    fail_runs_of_dead_commands,
)
from mm_assets_tests.dagster.conftest import BATCH
from mm_assets_tests.faults.world import sigkill


def _command_process() -> tuple[subprocess.Popen[str], str]:
    """A real process standing for a command, and the process tag a run of it carries."""
    import psutil

    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], text=True, stderr=subprocess.PIPE
    )
    return process, f"{process.pid}:{psutil.Process(process.pid).create_time():.3f}"


def _unfinished_copy(instance: dg.DagsterInstance, run: dg.DagsterRun, tags: dict) -> str:
    """A STARTED run like `run` (same job, origins and partition), of the command in `tags`."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        run.with_status(dg.DagsterRunStatus.STARTED)._replace(
            run_id=run_id, tags={**run.tags, **tags}
        )
    )
    return run_id


def test_a_run_whose_command_was_killed_is_failed_and_no_other(cli_env: Path) -> None:
    assert main(["build", str(cli_env / "export" / BATCH)]) == 0
    with dg.DagsterInstance.get() as instance:
        [built] = instance.get_runs()
        # The build's run names the process that ran it: this one (main() ran here).
        assert built.tags[COMMAND_HOST_TAG] == socket.gethostname()
        assert built.tags[COMMAND_PROCESS_TAG].split(":")[0] == str(os.getpid())

        killed, killed_tag = _command_process()
        alive, alive_tag = _command_process()
        try:
            here = {COMMAND_HOST_TAG: socket.gethostname()}
            orphan = _unfinished_copy(instance, built, {**here, COMMAND_PROCESS_TAG: killed_tag})
            running = _unfinished_copy(instance, built, {**here, COMMAND_PROCESS_TAG: alive_tag})
            elsewhere = _unfinished_copy(
                instance,
                built,
                {COMMAND_HOST_TAG: "another-machine", COMMAND_PROCESS_TAG: killed_tag},
            )
            assert fail_runs_of_dead_commands(instance) == []  # both commands still run
            sigkill(killed)

            # The daemon's sensor does it with no command typed.
            result = reaper_sensor(dg.build_sensor_context(instance=instance))
            assert orphan in result.skip_message

            def status(run_id: str) -> dg.DagsterRunStatus:
                return instance.get_run_by_id(run_id).status

            assert status(orphan) == dg.DagsterRunStatus.FAILURE
            assert status(running) == dg.DagsterRunStatus.STARTED
            assert status(elsewhere) == dg.DagsterRunStatus.STARTED
            assert status(built.run_id) == dg.DagsterRunStatus.SUCCESS
            failure = instance.all_logs(orphan, dg.DagsterEventType.RUN_FAILURE)
            assert f"process {killed.pid}" in failure[-1].dagster_event.message
            assert fail_runs_of_dead_commands(instance) == []  # once
        finally:
            alive.kill()
            alive.communicate(timeout=30)
