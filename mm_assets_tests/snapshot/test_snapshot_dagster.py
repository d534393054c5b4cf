"""Snapshot mode end to end through Dagster, over real sockets: three full-audience batches
built (`dg.materialize`), delivered over SFTP to the asyncssh drop, judged by the sandbox
processing log (the independent validator), and applied to `mediamath_audience_state` when the
`advance_audience_state` sensor asks. Proven on the S2S files parsed from the outbox and on the
held state: order (a later batch waits), the removal threshold blocks until `mm-assets
approve-snapshot`, a rejected family keeps its state and the next diff re-sends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mm_assets import cli
from mm_assets.core.audience_state import AudienceState
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import SftpDelivery
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.checks import every_file_accepted_by_mediamath
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets as build_assets
from mm_assets.defs.s2s_build import checks as build_checks
from mm_assets.defs.s2s_build import completeness
from mm_assets.defs.snapshot import build as snapshot_build
from mm_assets.defs.snapshot.assets import mediamath_audience_state
from mm_assets.defs.snapshot.checks import CHECK_NAME, snapshot_removals_within_threshold
from mm_assets.defs.snapshot.sensors import advance_audience_state
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.conftest import (
    approve_outbox,
    break_s2s_header,
    csv_bytes,
    parse_s2s,
    s2s_files_in,
    write_batch,
)
from mm_assets_tests.processing_log.test_processing_log_dagster import (
    SFTP_PASSWORD,
    log_server,
    processing_log,
)
from mm_assets_tests.snapshot.test_snapshot_diff import FIRST, IDFA, SECOND, SECOND_LOADS

BUILD = [
    build_assets.moloco_export_objects,
    build_assets.raw_audiences,
    build_assets.merged_segment_loads,
    build_assets.s2s_files,
]
CHECKS = [
    completeness.batch_is_complete,
    snapshot_removals_within_threshold,
    build_checks.files_conform_to_s2s_spec,
    build_checks.outbox_matches_manifest,
]
THIRD = [*SECOND, ("c9", "19", "", "", "")]


class Flow:
    def __init__(self, root: Path, instance: dg.DagsterInstance, sftp: SandboxSftpServer):
        self.root = root
        self.instance = instance
        self.sftp = sftp
        self.storage = BatchStorage(
            export_dir=str(root / "export"),
            work_dir=str(root / "work"),
            outbox_dir=str(root / "outbox"),
        )
        self.s2s = S2sFileSettings(
            partner_name="ExamplePartner",
            segment_namespace="ep",
            export_mode="snapshot",
            snapshot_state_dir=str(root / "state"),
        )
        known_hosts = root / "known_hosts"
        known_hosts.write_text(sftp.known_hosts_line + "\n")
        self.delivery = SftpDelivery(
            sftp_host=sftp.host,
            sftp_port=sftp.port,
            username=sftp.username,
            password=sftp.password,
            known_hosts=str(known_hosts),
            ledger_url=f"sqlite:///{root / 'ledger.sqlite'}",
        )
        self.state = AudienceState(root / "state")

    def build(self, batch: str, rows: list[tuple] | None = None) -> dg.ExecuteInProcessResult:
        if rows is not None:
            write_batch(self.root, {"part.csv": csv_bytes(rows)}, name=batch)
            self.instance.add_dynamic_partitions(export_batches.name, [batch])
        return dg.materialize(
            [*BUILD, *CHECKS],
            selection=BUILD[1:],
            partition_key=batch,
            instance=self.instance,
            resources={
                "storage": self.storage,
                "s2s": self.s2s,
                "moloco_source": MolocoExportSource(),
            },
            raise_on_error=False,
        )

    def loads(self, batch: str) -> set[tuple]:
        return {
            (f.agency, f.mobile, user, segment, ts)
            for f in map(parse_s2s, s2s_files_in(self.storage.outbox(batch)))
            for user, user_loads in f.rows
            for segment, ts in user_loads
        }

    def deliver(self, batch: str, log) -> None:
        result = dg.materialize(
            [upload_receipts, every_file_accepted_by_mediamath],
            partition_key=batch,
            instance=self.instance,
            resources={"storage": self.storage, "delivery": self.delivery, "processing_log": log},
        )
        assert result.success

    def resources(self, log) -> dict:
        return {
            "storage": self.storage,
            "s2s": self.s2s,
            "delivery": self.delivery,
            "processing_log": log,
        }

    def tick(self, log) -> dg.RunRequest | dg.SkipReason:
        context = dg.build_sensor_context(instance=self.instance, resources=self.resources(log))
        return advance_audience_state(context)

    def advance(self, batch: str, log) -> dict:
        """What the sensor's run does: materialise mediamath_audience_state for the batch."""
        request = self.tick(log)
        assert isinstance(request, dg.RunRequest), request
        assert request.partition_key == batch
        result = dg.materialize(
            [mediamath_audience_state],
            partition_key=batch,
            instance=self.instance,
            resources=self.resources(log),
        )
        assert result.success
        [materialization] = result.asset_materializations_for_node("mediamath_audience_state")
        return {k: v.value for k, v in materialization.metadata.items()}


@pytest.fixture
def flow(tmp_path: Path) -> Iterator[Flow]:
    (tmp_path / "dagster").mkdir()
    with (
        dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance,
        SandboxSftpServer(tmp_path / "drop", password=SFTP_PASSWORD) as sftp,
    ):
        yield Flow(tmp_path, instance, sftp)


def check_result(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    return evaluation


def test_three_snapshots_through_dagster(flow, monkeypatch):
    with log_server(flow.sftp) as server:
        log = processing_log(server)

        # 1. First snapshot: nothing held, all adds.
        first = flow.build("batch_1", FIRST)
        assert first.success
        assert len(flow.loads("batch_1")) == 6
        assert all(ts != "-1" for *_, ts in flow.loads("batch_1"))
        merged = first.asset_materializations_for_node("merged_segment_loads")[0].metadata
        assert merged["snapshot_adds"].value == 6 and merged["snapshot_removals"].value == 0

        # The next batch waits, visibly, while batch_1's verdict is not applied.
        waiting = flow.build("batch_2", SECOND)
        assert not waiting.success
        assert "waits for batch batch_1" in str(waiting.all_events)
        skip = flow.tick(log)
        assert isinstance(skip, dg.SkipReason) and "waiting for MediaMath" in skip.skip_message

        flow.deliver("batch_1", log)
        held = flow.advance("batch_1", log)
        assert held["members_held"] == 6 and held["last_advanced_batch"] == "batch_1"

        # 2. The batch that waited is re-requested; its diff removes 50 % of the global
        # cookies: the safety check blocks it and nothing is written.
        request = flow.tick(log)
        assert isinstance(request, dg.RunRequest) and request.partition_key == "batch_2"
        blocked = flow.build("batch_2")
        assert not check_result(blocked).passed
        assert "approve-snapshot batch_2" in check_result(blocked).description
        assert not flow.storage.outbox("batch_2").exists()
        alone = dg.materialize(  # writing its files any other way is refused too
            [build_assets.s2s_files],
            partition_key="batch_2",
            instance=flow.instance,
            resources={"storage": flow.storage, "s2s": flow.s2s},
            raise_on_error=False,
        )
        assert not alone.success and "not written for delivery" in str(alone.all_events)
        skip = flow.tick(log)
        assert isinstance(skip, dg.SkipReason) and "approve-snapshot batch_2" in skip.skip_message

        monkeypatch.setenv("MM_EXPORT_MODE", "snapshot")
        monkeypatch.setenv("MM_SNAPSHOT_STATE_DIR", str(flow.root / "state"))
        assert cli.main(["approve-snapshot", "batch_2", "--reason", "client churn"]) == 0
        released = flow.build("batch_2")
        assert released.success
        approval = check_result(released).metadata["approval"].value
        assert approval["reason"] == "client churn" and approval["approved_by"]
        assert flow.loads("batch_2") == SECOND_LOADS

        # MediaMath rejects the global cookie file (a header out of order, S2S-HDR).
        outbox = flow.storage.outbox("batch_2")
        [global_file] = [p.name for p in s2s_files_in(outbox) if p.name.count("_") == 1]
        break_s2s_header(outbox, global_file)
        approve_outbox(outbox, run_id="validator-shares-the-bug")
        snapshot_build.bind(flow.storage.work_for("batch_2"), flow.s2s)
        flow.deliver("batch_2", log)
        held = flow.advance("batch_2", log)
        assert held["families_kept"] == 1 and held["last_advanced_batch"] == "batch_2"
        assert "|0" not in flow.state.pointer().history[-1]["advanced"]

        # 3. The third snapshot re-sends what MediaMath did not take, and only that (its
        # removals are again half of the global cookies held: approved beforehand).
        assert cli.main(["approve-snapshot", "batch_3"]) == 0
        third = flow.build("batch_3", THIRD)
        assert third.success, str(third.all_events)
        assert flow.loads("batch_3") == {
            ("", False, "c1", "11", "-1"),
            ("", False, "c2", "13", "0"),
            ("", False, "c3", "12", "-1"),
            ("", False, "c4", "14", "0"),
            ("", False, "c9", "19", "0"),
        }
        flow.deliver("batch_3", log)
        held = flow.advance("batch_3", log)
        assert held["members_held"] == 7
    assert ("Acme", True, IDFA.lower(), "30", "0") not in flow.loads("batch_3")
