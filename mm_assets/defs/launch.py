"""Start a run of the code location the way `dagster job launch` and the UI do, in this process.

`mm-assets build` / `deliver` used to run jobs with `execute_in_process`: such runs carry no
code-location origin, so the UI leaves them off the Overview timeline and the Jobs page and
warns on re-execution. Here the run is created for the workspace's own code location
(`workspace.yaml`, the one `dagster dev` loads): the run records that location's origin, so it
is an ordinary run, re-executable from the UI.

What a launch through a code server and the instance's run launcher costs, and what runs here
instead (dagster 1.13 source):
- `dagster job launch` starts a gRPC code server that imports the definitions, asks it for the
  job's snapshot and execution plan (`_cli/job.py::_create_run`), and has the run launcher start
  a run worker, a second process that imports the definitions again and runs
  `dagster api execute_run` (`_cli/api.py::_execute_run_command_body`), while the caller polls.
  Two processes importing the definitions were most of `mm-assets build`'s fixed time.
- Here the workspace's code location is loaded in this process (`InProcessCodeLocation`, under
  the workspace's own origin, so the run's origins are the ones a code server gives: tested),
  the run is created from it with `_create_run`, and `_execute_run_command_body`, the run
  worker's body, executes it in this process: the same events, materialisations and checks in
  the instance, and the run ends when the call returns (nothing to poll).
Settings reach the run through the environment, as they reached a code server.
"""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psutil
from dagster._cli.api import _execute_run_command_body  # the body of the run worker
from dagster._cli.job import _create_run  # the body of `dagster job launch`
from dagster._cli.workspace.cli_target import (
    get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location,
)
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import CodeLocationOrigin, InProcessCodeLocationOrigin
from dagster._core.remote_representation.code_location import InProcessCodeLocation
from dagster._core.workspace.load_target import WorkspaceFileTarget

from mm_assets.defs.partitions import register_export_batch
from mm_assets.defs.settings import PROJECT_ROOT

WORKSPACE = PROJECT_ROOT / "workspace.yaml"
# The process a command's run executes in: no run worker or run launcher watches it, so a run
# whose command died (kill -9, a lost machine) would stay STARTED for ever, and hold its batch's
# run slot (`dagster/partition` limit 1 in dagster.yaml) and its assets "in progress" for the
# automation. `fail_runs_of_dead_commands` finds such runs by these tags and fails them.
COMMAND_HOST_TAG = "mm-assets/command-host"
COMMAND_PROCESS_TAG = "mm-assets/command-process"  # "<pid>:<process creation time>"


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    success: bool
    materializations: dict[str, dg.AssetMaterialization]  # asset key -> its materialization
    check_evaluations: list[dg.AssetCheckEvaluation]
    failures: list[str]  # step error messages


class _WorkspaceLocationInThisProcess(InProcessCodeLocation):
    """The workspace's code location, loaded in this process instead of a code server.

    Its origin is the workspace's (not an in-process one): the handles of its repository and
    jobs, and so the runs created from them, carry the origin `dagster dev` and the daemon know.
    """

    def __init__(self, workspace_origin: CodeLocationOrigin, instance: dg.DagsterInstance):
        self._workspace_origin = workspace_origin
        super().__init__(
            InProcessCodeLocationOrigin(
                workspace_origin.loadable_target_origin,
                location_name=workspace_origin.location_name,
                container_context={},  # what a code server of the workspace reports
            ),
            instance,
        )

    @property
    def origin(self) -> CodeLocationOrigin:  # type: ignore[override]
        return self._workspace_origin


def workspace_origin() -> CodeLocationOrigin:
    """The origin of the one code location of `workspace.yaml`."""
    [origin] = WorkspaceFileTarget(paths=[str(WORKSPACE)]).create_origins()
    return origin


@contextmanager
def _fresh_definitions(origin: CodeLocationOrigin) -> Iterator[None]:
    """Load the location's module as a code server would: fresh, in the current environment.

    The definitions read their settings from the environment when the module runs, and this
    process may have imported it earlier under another one (`mm-assets build` sets the batch's
    export folder after reading its storage settings; tests build in one process). Dagster keeps
    the last job definition per job name (`ReconstructableJob.get_definition`'s lru_cache), so
    that cache is cleared too, before and after: no run sees a previous load's resources.
    """
    module_name = origin.loadable_target_origin.module_name
    if module := sys.modules.get(module_name):
        importlib.reload(module)
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    try:
        yield
    finally:
        ReconstructableJob.get_definition.cache_clear()
        ReconstructableJob.get_repository_definition.cache_clear()


def launch_and_wait(
    instance: dg.DagsterInstance,
    job_name: str,
    batch: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Create one partition run of `job_name` for the workspace's code location and run it."""
    register_export_batch(instance, batch)
    fail_runs_of_dead_commands(instance)
    origin = workspace_origin()
    with _fresh_definitions(origin):
        location = _WorkspaceLocationInThisProcess(origin, instance)
        repo = get_remote_repository_from_code_location(location, None)
        remote_job = get_remote_job_from_remote_repo(repo, job_name)
        run = _create_run(
            instance=instance,
            code_location=location,
            remote_repo=repo,
            remote_job=remote_job,
            run_config=dict(run_config or {}),
            tags={"dagster/partition": batch, **_this_command(), **(tags or {})},
            op_selection=None,
            run_id=None,
        )
        # Not queued: the CLI waits for it, and without a daemon running (the
        # QueuedRunCoordinator's dequeuer) a queued run would never start. STARTING is what
        # `instance.launch_run` records before it hands a run to its launcher; the run worker's
        # body then writes every event to the instance and reports a failure there before it
        # returns, whatever raised.
        starting = DagsterEvent(DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name)
        instance.report_dagster_event(starting, run_id=run.run_id)
        _execute_run_command_body(
            run.run_id, instance, write_stream_fn=_ignore, set_exit_code_on_failure=False
        )
    return _outcome(instance, instance.get_run_by_id(run.run_id))


def _this_command() -> dict[str, str]:
    me = psutil.Process()
    return {
        COMMAND_HOST_TAG: socket.gethostname(),
        COMMAND_PROCESS_TAG: f"{me.pid}:{me.create_time():.3f}",
    }


def _command_is_alive(process_tag: str) -> bool:
    pid, _, created = process_tag.partition(":")
    try:
        # The creation time tells a live command from a later process given its number.
        return f"{psutil.Process(int(pid)).create_time():.3f}" == created
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def fail_runs_of_dead_commands(instance: dg.DagsterInstance) -> list[str]:
    """Fail the unfinished runs of `mm-assets` commands of this machine whose process is gone;
    returns their run IDs. Runs of other machines are left to a process on those machines."""
    unfinished = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags={COMMAND_HOST_TAG: socket.gethostname()},
        ),
        limit=100,
    )
    this_command = _this_command()[COMMAND_PROCESS_TAG]
    failed = []
    for run in unfinished:
        process = run.tags.get(COMMAND_PROCESS_TAG, "")
        if process and process != this_command and not _command_is_alive(process):
            pid = process.partition(":")[0]
            instance.report_run_failed(
                run, message=f"the mm-assets command running it (process {pid}) is gone"
            )
            failed.append(run.run_id)
    return failed


def _ignore(_event: object) -> None:
    """The run worker's event stream (`dagster api execute_run` buffers it unread): every event
    is in the instance already."""


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
