"""What a user sees in the UI after the sample batch runs, read through `dagster-webserver`'s
GraphQL API (the API the UI itself reads): the lineage from the export to MediaMath's checks,
each asset's metadata for the batch, the batch's check results, and ordinary runs of the code
location (a `repositoryOrigin`, so they are on the Overview timeline and re-executable)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mm_assets_tests.cli.first_hour import lines, mm_assets, sandbox_process, user_env
from mm_assets_tests.ui.webserver import Webserver, dagster_webserver

BATCH = "batch_20261120"
SAMPLE_BATCH_DIR = f"data/export/{BATCH}"


@dataclass(frozen=True)
class Expected:
    upstream: tuple[str, ...]
    checks: tuple[str, ...] = ()
    metadata: frozenset[str] = field(default_factory=frozenset)  # at least these keys
    # False: no materialization for the batch is expected from a delta-mode build + deliver
    # (the partner-wide quota is observed, the audience state advances in snapshot mode only).
    materialized: bool = True


# The graph a user sees, one row per asset: a new asset (the batch report) is one more row.
EXPECTED_ASSETS = {
    "moloco_export_objects": Expected((), (), frozenset({"method", "objects", "bytes"})),
    "raw_audiences": Expected(
        ("moloco_export_objects",),
        ("batch_is_complete",),
        frozenset({"rows_read", "rows_quarantined", "quarantine_reasons", "files"}),
    ),
    "merged_segment_loads": Expected(
        ("raw_audiences",),
        ("snapshot_removals_within_threshold",),
        frozenset({"loads_in", "loads_out", "repeats_folded", "conflicting_loads"}),
    ),
    "s2s_files": Expected(
        ("merged_segment_loads",),
        ("files_conform_to_s2s_spec", "outbox_matches_manifest"),
        frozenset({"files", "gz_bytes", "users", "manifest", "outbox"}),
    ),
    "upload_receipts": Expected(
        ("s2s_files",),
        ("every_file_accepted_by_mediamath", "every_file_has_a_receipt"),
        frozenset(
            {"transport", "receipts", "quota_files_left_this_hour", "quota_bytes_left_today"}
        ),
    ),
    "batch_report": Expected(
        ("upload_receipts",),
        (),
        frozenset(
            {"summary", "mediamath_verdict", "files_table", "families", "quota_bytes_left_today"}
        ),
    ),
    "mediamath_quota": Expected(("upload_receipts",), materialized=False),
    "mediamath_audience_state": Expected(("upload_receipts",), materialized=False),
}
JOBS = ("build_s2s_files", "deliver_s2s_files")

ASSET_NODES = """
query ($partition: String!) {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name } } }
    assetMaterializations(partitions: [$partition], limit: 1) {
      partition runId metadataEntries { label }
    }
  }
}"""
CHECK_EXECUTIONS = """
query ($asset: AssetKeyInput!, $check: String!, $partition: String!) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, partition: $partition, limit: 1) {
    status partition evaluation { success severity partition }
  }
}"""
RUNS = """
{
  runsOrError {
    ... on Runs {
      results {
        runId jobName status
        tags { key value }
        repositoryOrigin { repositoryLocationName repositoryName }
      }
    }
  }
}"""


@dataclass(frozen=True)
class SampleRun:
    root: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleRun]:
    """The sample batch built and delivered with the CLI into a running sandbox, as
    `scripts/demo.sh` leaves it; the sandbox runs until the module is done."""
    root = tmp_path_factory.mktemp("ui")
    env = user_env(root)
    with sandbox_process(env, root / "sandbox") as sandbox:
        build = mm_assets("build", SAMPLE_BATCH_DIR, env=env)
        assert build.returncode == 0, build.stdout + build.stderr
        deliver = mm_assets("deliver", BATCH, env=env)
        assert deliver.returncode == 0, deliver.stdout + deliver.stderr
        # Delivered into the sandbox that was running, which still serves.
        assert sandbox.process.poll() is None
        delivered = [line for line in lines(deliver.stdout) if line.split()[0] == "delivered"]
        assert len(delivered) == len(list((root / "sandbox" / "sftp_drop").iterdir())) > 0
        yield SampleRun(root, env)


@pytest.fixture(scope="module")
def ui(sample_run: SampleRun) -> Iterator[Webserver]:
    """dagster-webserver on the sample run's instance, as `scripts/ui.sh` shows it."""
    with dagster_webserver(sample_run.env, sample_run.root) as webserver:
        yield webserver


def _nodes(ui: Webserver) -> dict[str, dict]:
    nodes = ui.graphql(ASSET_NODES, partition=BATCH)["assetNodes"]
    return {"/".join(node["assetKey"]["path"]): node for node in nodes}


def test_the_lineage_runs_from_the_export_to_mediamaths_checks(ui: Webserver) -> None:
    nodes = _nodes(ui)
    assert set(nodes) == set(EXPECTED_ASSETS)
    for name, expected in EXPECTED_ASSETS.items():
        node = nodes[name]
        assert tuple(sorted("/".join(d["path"]) for d in node["dependencyKeys"])) == tuple(
            sorted(expected.upstream)
        ), name
        checks = node["assetChecksOrError"].get("checks", [])
        assert sorted(c["name"] for c in checks) == sorted(expected.checks), name


def test_every_asset_shows_its_metadata_for_the_batch(ui: Webserver) -> None:
    nodes = _nodes(ui)
    for name, expected in EXPECTED_ASSETS.items():
        if not expected.materialized:
            continue
        (latest,) = nodes[name]["assetMaterializations"]
        assert latest["partition"] == BATCH
        labels = {entry["label"] for entry in latest["metadataEntries"]}
        assert expected.metadata <= labels, (name, sorted(labels))


def test_every_check_of_the_batch_passed(ui: Webserver) -> None:
    for name, expected in EXPECTED_ASSETS.items():
        for check in expected.checks:
            (execution,) = ui.graphql(
                CHECK_EXECUTIONS, asset={"path": [name]}, check=check, partition=BATCH
            )["assetCheckExecutions"]
            assert execution["status"] == "SUCCEEDED", (name, check, execution)
            assert execution["evaluation"]["success"] is True
            assert execution["evaluation"]["partition"] == BATCH


def test_the_cli_runs_are_ordinary_runs_of_the_code_location(ui: Webserver) -> None:
    runs = ui.graphql(RUNS)["runsOrError"]["results"]
    assert sorted(run["jobName"] for run in runs) == sorted(JOBS)
    for run in runs:
        assert run["status"] == "SUCCESS"
        assert {"key": "dagster/partition", "value": BATCH} in run["tags"]
        origin = run["repositoryOrigin"]
        assert (
            origin is not None and origin["repositoryLocationName"] == "mm_assets.definitions:defs"
        )


def test_a_step_that_fails_in_a_run_prints_its_cause_once(sample_run: SampleRun) -> None:
    """A real run whose step fails (a CFT integration name MediaMath cannot have), on an
    instance of its own so the UI's runs above stay the sample's."""
    home = sample_run.root / "failing_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        Path(sample_run.env["DAGSTER_HOME"], "dagster.yaml").read_text()
    )
    env = {
        **sample_run.env,
        "DAGSTER_HOME": str(home),
        "MM_DELIVERY_TRANSPORT": "cft",
        "MM_CFT_INTEGRATION": "not/a name",
        "MM_SFTP_USERNAME": "u",
        "MM_SFTP_PASSWORD": "Pw-3hG8sLq2Vn5Xc",
        "MM_DELIVERY_LEDGER_URL": f"sqlite:///{home / 'ledger.sqlite'}",
    }
    result = mm_assets("deliver", BATCH, env=env)
    assert result.returncode == 1
    (run_line,) = [line for line in lines(result.stdout) if line.startswith("batch ")]
    run_id = run_line.split("(run ")[1].rstrip(")")
    assert lines(result.stderr) == [
        "  failed: upload_receipts: ValueError: integration must be a plain name (letters, "
        "digits, . _ -)",
        f"  (the traces: --traceback, or run {run_id} in the UI; the processes' output: "
        f"{home / 'logs' / 'mm-assets.log'})",
    ]
    assert "Pw-3hG8sLq2Vn5Xc" not in result.stdout + result.stderr
