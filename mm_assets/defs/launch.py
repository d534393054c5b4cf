"""Launch a job of the code location the way `dagster job launch` and the UI do, and wait.

`mm-assets build` / `deliver` used to run jobs with `execute_in_process`: such runs carry no
code-location origin, so the UI leaves them off the Overview timeline and the Jobs page and
warns on re-execution. Here the run is created from the workspace's own code location
(`workspace.yaml`, the one `dagster dev` loads) and started by the instance's run launcher:
an ordinary run, re-executable from the UI. Settings reach the run
through the environment, which the code server (and so the run worker) inherits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster import __version__ as dagster_version
from dagster._cli.job import _create_run  # the body of `dagster job launch`
from dagster._cli.workspace.cli_target import (
    WorkspaceOpts,
    get_code_location_from_workspace,
    get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location,
    get_workspace_from_cli_opts,
)

from mm_assets.defs.partitions import export_batches
from mm_assets.defs.settings import PROJECT_ROOT

WORKSPACE = PROJECT_ROOT / "workspace.yaml"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    success: bool
    materializations: dict[str, dg.AssetMaterialization]  # asset key -> its materialization
    check_evaluations: list[dg.AssetCheckEvaluation]
    failures: list[str]  # step error messages


def launch_and_wait(
    instance: dg.DagsterInstance,
    job_name: str,
    batch: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Launch one partition run of `job_name` and wait until it has finished."""
    instance.add_dynamic_partitions(export_batches.name, [batch])
    opts = WorkspaceOpts(workspace=(str(WORKSPACE),))
    # The code server's INFO lines (started, stopping) are noise in a terminal.
    with get_workspace_from_cli_opts(
        instance, dagster_version, opts, log_level="WARNING"
    ) as workspace:
        location = get_code_location_from_workspace(workspace, None)
        repo = get_remote_repository_from_code_location(location, None)
        remote_job = get_remote_job_from_remote_repo(repo, job_name)
        run = _create_run(
            instance=instance,
            code_location=location,
            remote_repo=repo,
            remote_job=remote_job,
            run_config=dict(run_config or {}),
            tags={"dagster/partition": batch, **(tags or {})},
            op_selection=None,
            run_id=None,
        )
        # Launched, not queued: the CLI waits for it, and without a daemon running (the
        # QueuedRunCoordinator's dequeuer) a queued run would never start.
        instance.launch_run(run.run_id, workspace)
        # Inside the workspace: the run's code server stays up until the run is over.
        while not (current := instance.get_run_by_id(run.run_id)) or not current.is_finished:
            time.sleep(POLL_SECONDS)
    return _outcome(instance, current)


def _outcome(instance: dg.DagsterInstance, run: Any) -> RunOutcome:
    def events(kind: dg.DagsterEventType) -> list[Any]:
        return [e.dagster_event.event_specific_data for e in instance.all_logs(run.run_id, kind)]

    materializations = {
        data.materialization.asset_key.to_user_string(): data.materialization
        for data in events(dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    return RunOutcome(
        run_id=run.run_id,
        success=run.status == dg.DagsterRunStatus.SUCCESS,
        materializations=materializations,
        check_evaluations=events(dg.DagsterEventType.ASSET_CHECK_EVALUATION),
        failures=[data.error.message.strip() for data in events(dg.DagsterEventType.STEP_FAILURE)],
    )
