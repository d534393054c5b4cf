"""A partial snapshot is never diffed into delivery: in snapshot mode an incomplete batch (a
truncated gzip) is stopped by `batch_is_complete` in its build, and even when its merge is
materialised on its own, `snapshot_removals_within_threshold` fails on it and `s2s_files`
refuses to write it, until a person approves it (recorded in the check's metadata)."""

from __future__ import annotations

import dagster as dg

from mm_assets.core.audience_state import approve_snapshot
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets, completeness
from mm_assets.defs.snapshot.checks import CHECK_NAME, snapshot_removals_within_threshold
from mm_assets_tests.conftest import write_batch
from mm_assets_tests.dagster.test_batch_completeness import GOOD, TRUNCATED

ASSETS = [
    assets.moloco_export_objects,
    assets.raw_audiences,
    assets.merged_segment_loads,
    assets.s2s_files,
]
CHECKS = [completeness.batch_is_complete, snapshot_removals_within_threshold]


def test_an_incomplete_snapshot_is_blocked_until_approved(tmp_path):
    write_batch(tmp_path, {"good.csv": GOOD, "cut.csv.gz": TRUNCATED}, name="b1")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(export_batches.name, ["b1"])
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )
    s2s = S2sFileSettings(
        partner_name="P",
        segment_namespace="ep",
        export_mode="snapshot",
        snapshot_state_dir=str(tmp_path / "state"),
    )
    resources = {"storage": storage, "s2s": s2s, "moloco_source": MolocoExportSource()}

    def run(selection):
        return dg.materialize(
            [*ASSETS, *CHECKS],
            selection=selection,
            partition_key="b1",
            instance=instance,
            raise_on_error=False,
            resources=resources,
        )

    def safety(result) -> dg.AssetCheckEvaluation:
        [evaluation] = [
            e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME
        ]
        return evaluation

    build = run(ASSETS[1:])
    assert not build.success  # batch_is_complete blocked the rest of the run
    assert not storage.outbox("b1").exists()

    merge_alone = run([assets.merged_segment_loads])
    assert not safety(merge_alone).passed
    assert "the batch is incomplete: 1 file(s)" in safety(merge_alone).description
    write_alone = run([assets.s2s_files])
    assert not write_alone.success and not storage.outbox("b1").exists()

    approve_snapshot(tmp_path / "state", "b1", by="ops", reason="one file lost", at="now")
    released = run([assets.merged_segment_loads, assets.s2s_files])
    assert released.success
    assert safety(released).metadata["approval"].value["approved_by"] == "ops"
    assert storage.outbox("b1").exists()
