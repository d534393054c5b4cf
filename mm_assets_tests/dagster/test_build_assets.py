"""The Dagster layer: the three build assets and their blocking checks on a copy of the sample
batch, the `mm-assets` CLI, and a snapshot of the asset graph (keys, deps, groups, partitions)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import dagster as dg
import pytest

from mm_assets.cli import main
from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.metadata import table_rows
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets, checks
from mm_assets.defs.settings import PROJECT_ROOT, SAMPLE_EXPORT_DIR

SAMPLE_BATCH = SAMPLE_EXPORT_DIR / "batch_20261120"
BATCH = SAMPLE_BATCH.name
# The sample's bad rows: 4 + 1 undecodable in part1, 4 in part2, 1 invalid JSON in part4.
SAMPLE_QUARANTINED = 10


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    target = tmp_path / "export" / BATCH
    shutil.copytree(SAMPLE_BATCH, target)
    return target


def resources(tmp_path: Path) -> dict[str, object]:
    return {
        "storage": BatchStorage(
            export_dir=str(tmp_path / "export"),
            work_dir=str(tmp_path / "work"),
            outbox_dir=str(tmp_path / "outbox"),
        ),
        "s2s": S2sFileSettings(
            partner_name="ExamplePartner", segment_namespace="ep", hashed_taxonomies="SportsDaily"
        ),
        "moloco_source": MolocoExportSource(),  # method "local": the export folder itself
    }


def test_materialising_the_build_assets_writes_valid_files_and_passes_the_checks(
    tmp_path, sample_copy
):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(export_batches.name, [BATCH])
    result = dg.materialize(
        [
            assets.moloco_export_objects,
            assets.raw_audiences,
            assets.merged_segment_loads,
            assets.s2s_files,
            checks.files_conform_to_s2s_spec,
            checks.outbox_matches_manifest,
        ],
        partition_key=BATCH,
        instance=instance,
        resources=resources(tmp_path),
    )
    assert result.success

    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"files_conform_to_s2s_spec": True, "outbox_matches_manifest": True}

    [raw] = result.asset_materializations_for_node("raw_audiences")
    meta = {k: getattr(v, "value", v) for k, v in raw.metadata.items()}
    assert meta["rows_quarantined"] == SAMPLE_QUARANTINED
    assert meta["rows_read"] == meta["dagster/row_count"] + SAMPLE_QUARANTINED
    assert meta["files_read"] == 5 and meta["files_unusable"] == 0
    reasons = {r["reason"]: r["rows"] for r in table_rows(meta["quarantine_reasons"])}
    assert "undecodable bytes (not UTF-8)" in reasons and "line is not a JSON object" in reasons
    assert sum(reasons.values()) == SAMPLE_QUARANTINED

    [merged] = result.asset_materializations_for_node("merged_segment_loads")
    assert merged.metadata["users_continued_on_more_lines"].value == 1
    assert merged.metadata["conflicting_loads"].value >= 1

    outbox = tmp_path / "outbox" / BATCH
    manifest = read_manifest(outbox)
    names = sorted(p.name for p in outbox.glob("*.log.gz"))
    assert names == sorted(f.name for f in manifest)
    # global + 3 agencies for cookies; mobile IDs: global + agencies that have any.
    agencies = {(f.agency, f.mobile) for f in manifest}
    assert {
        ("", False),
        ("", True),
        ("AcmeRetail", False),
        ("GlobexMedia", False),
        ("SportsDaily", False),
    } <= agencies
    for built in manifest:
        assert validate_file(outbox / built.name).ok
        text = gzip.decompress((outbox / built.name).read_bytes()).decode()
        assert ("HashSegments: 1" in text) == (built.agency == "SportsDaily")
        assert f"Mobile: {int(built.mobile)}\n" in text
    [files] = result.asset_materializations_for_node("s2s_files")
    assert files.metadata["files"].value == len(manifest)
    assert files.metadata["loads"].value == merged.metadata["loads_out"].value


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MM_ASSETS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MM_ASSETS_OUTBOX_DIR", str(tmp_path / "outbox"))
    return tmp_path


def test_cli_build_returns_0_on_the_sample_and_fills_the_outbox(cli_env, sample_copy, capsys):
    assert main(["build", str(sample_copy)]) == 0
    out = capsys.readouterr().out
    assert f"rows quarantined {SAMPLE_QUARANTINED:>12,}" in out
    assert "check files_conform_to_s2s_spec: passed" in out
    files = sorted((cli_env / "outbox" / BATCH).glob("*.log.gz"))
    assert files
    # The summary names the files it built, with their bytes (not only a count).
    assert all(f"{f.name}" in out and f"{f.stat().st_size:,}" in out for f in files)
    assert main(["validate", *map(str, files)]) == 0
    # An ordinary run of the code location (on the UI's timeline, re-executable), not an
    # in-process one: it carries the workspace's origin.
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
    assert run.job_name == "build_s2s_files" and run.tags["dagster/partition"] == BATCH
    assert run.remote_job_origin is not None
    assert run.remote_job_origin.location_name == "mm_assets.definitions:defs"
    # ... and the UI sees it so: GraphQL reads its repository origin back.
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    query = (
        "{ runsOrError { ... on Runs { results { runId "
        "repositoryOrigin { repositoryLocationName } } } } }"
    )
    workspace = WorkspaceFileTarget([str(PROJECT_ROOT / "workspace.yaml")])
    with (
        dg.DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, workspace) as process,
    ):
        data = execute_dagster_graphql(process.create_request_context(), query).data
    [seen] = data["runsOrError"]["results"]
    assert seen == {
        "runId": run.run_id,
        "repositoryOrigin": {"repositoryLocationName": "mm_assets.definitions:defs"},
    }


def test_cli_build_of_a_missing_folder_returns_2(cli_env):
    assert main(["build", str(cli_env / "no_such_batch")]) == 2


def test_cli_validate_returns_1_for_a_broken_file(tmp_path, capsys):
    path = tmp_path / "ExamplePartner_20261120120000.log.gz"
    # Header without the blank line, a segment above 2**31-1 and a repeated user.
    path.write_bytes(
        gzip.compress(
            b"Version: 3\nFileIdentifier: ExamplePartner_20261120120000.log.gz\n"
            b"DateCreated: 1795176000\nUserNamespace: mm\nSegmentNamespace: ep\nMobile: 0\n"
            b"u1 3000000000:0\nu2 1:0\nu1 2:0\n"
        )
    )
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "S2S-SEG" in out and "S2S-EFF" in out


def test_cli_validate_returns_1_for_a_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "ExamplePartner_20261120120000.log.gz"
    path.write_bytes(b"Version: 3\n")
    assert main(["validate", str(path)]) == 1


EXPECTED_ASSETS = {
    "moloco_export_objects": {"deps": set(), "group": "s2s_build"},
    "raw_audiences": {"deps": {"moloco_export_objects"}, "group": "s2s_build"},
    "merged_segment_loads": {"deps": {"raw_audiences"}, "group": "s2s_build"},
    "s2s_files": {"deps": {"merged_segment_loads"}, "group": "s2s_build"},
    "upload_receipts": {"deps": {"s2s_files"}, "group": "delivery"},
    "batch_report": {"deps": {"upload_receipts"}, "group": "delivery"},
    "mediamath_quota": {"deps": {"upload_receipts"}, "group": "delivery"},
    "mediamath_audience_state": {"deps": {"upload_receipts"}, "group": "snapshot"},
}
# One quota for the partner across batches (S2S-QUOTA): the only asset not per batch.
UNPARTITIONED_ASSETS = {"mediamath_quota"}
EXPECTED_CHECKS = {
    ("raw_audiences", "batch_is_complete"),
    ("merged_segment_loads", "snapshot_removals_within_threshold"),
    ("s2s_files", "files_conform_to_s2s_spec"),
    ("s2s_files", "outbox_matches_manifest"),
    ("upload_receipts", "every_file_has_a_receipt"),
    ("upload_receipts", "every_file_accepted_by_mediamath"),
}


def test_definitions_load_and_the_asset_graph_matches_the_snapshot():
    from mm_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    got = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        partitions = node.partitions_def
        if key.to_user_string() in UNPARTITIONED_ASSETS:
            assert partitions is None, key
        else:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition), key
            assert partitions.name == "export_batches"
        got[key.to_user_string()] = {
            "deps": {k.to_user_string() for k in node.parent_keys},
            "group": node.group_name,
        }
    assert got == EXPECTED_ASSETS
    assert {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys} == (
        EXPECTED_CHECKS
    )
    # Per-batch verdicts: every check is partitioned like its asset.
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.partitions_def == export_batches, check_key
    build_job = defs.resolve_job_def("build_s2s_files")
    assert build_job.partitions_def == export_batches
    assert {k.to_user_string() for k in build_job.asset_layer.executable_asset_keys} == {
        "moloco_export_objects",
        "raw_audiences",
        "merged_segment_loads",
        "s2s_files",
    }
    assert {s.name for s in repo.sensor_defs} == {
        "moloco_export_batches",
        "delivery_automation",
        "deferred_deliveries",
        "processing_log_poller",
        "mediamath_quota_observer",
        "alert_on_failed_checks",
        "alert_on_run_failure",
        "fail_runs_of_dead_commands",
        "advance_audience_state",
    }
