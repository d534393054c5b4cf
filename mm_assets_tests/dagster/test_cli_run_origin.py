"""`mm-assets build` runs its job in its own process, yet the run is the workspace's: it carries
the origins a code server of `workspace.yaml` gives (what `dagster job launch` and the UI
record), so the UI re-executes it through that code location like any run it launched."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from mm_assets.cli import main
from mm_assets.defs.launch import WORKSPACE
from mm_assets_tests.dagster.conftest import BATCH

LOCATION = "mm_assets.definitions:defs"
# Generous: only a hung re-execution (a code server and a run worker on 2 busy cores) reaches it.
REEXECUTION_TIMEOUT = 600

REEXECUTE = """
mutation ($parentRunId: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""


def _materialized_assets(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.all_logs(run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {
        r.dagster_event.event_specific_data.materialization.asset_key.to_user_string()
        for r in records
    }


def test_a_cli_build_run_has_the_workspace_origin_and_the_ui_re_executes_it(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["build", str(cli_env / "export" / BATCH)]) == 0
    with dg.DagsterInstance.get() as instance:
        [parent] = instance.get_runs()
        # The UI's server: the workspace's code location in its code server, as `dagster dev`
        # loads it, with the export folder the build used.
        monkeypatch.setenv("MM_ASSETS_EXPORT_DIR", str(cli_env / "export"))
        with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE)])) as process:
            context = process.create_request_context()
            location = context.get_code_location(LOCATION)
            [repo] = location.get_repositories().values()
            served = repo.get_full_job(parent.job_name)
            # Exactly the origins a run launched through that code server records.
            assert parent.remote_job_origin == served.get_remote_origin()
            assert parent.job_code_origin == served.get_python_origin()

            # "Re-execute all" in the UI: the webserver's mutation, launched by the instance's
            # run launcher through the code server.
            answer = execute_dagster_graphql(context, REEXECUTE, {"parentRunId": parent.run_id})
            launched = answer.data["launchRunReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            child_id = launched["run"]["runId"]
            deadline = time.monotonic() + REEXECUTION_TIMEOUT
            while not (child := instance.get_run_by_id(child_id)).is_finished:
                assert time.monotonic() < deadline, f"re-execution {child_id} did not finish"
                time.sleep(0.5)
        assert child.status == dg.DagsterRunStatus.SUCCESS
        assert child.parent_run_id == parent.run_id
        assert child.tags["dagster/partition"] == BATCH
        assert child.remote_job_origin == parent.remote_job_origin
        assert (
            _materialized_assets(instance, child_id)
            == _materialized_assets(instance, parent.run_id)
            == {"moloco_export_objects", "raw_audiences", "merged_segment_loads", "s2s_files"}
        )
