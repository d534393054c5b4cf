"""A batch with a file we could not read is incomplete (issue 8): the blocking check
`raw_audiences / batch_is_complete` stops the build unless partial batches are accepted, an
empty file is reported but passes, and `mm-assets build` says which happened by its exit code."""

from __future__ import annotations

import gzip
import os

import dagster as dg
import pytest

from mm_assets.cli import EXIT_BATCH_INCOMPLETE, main
from mm_assets.defs.metadata import table_rows
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets, checks, completeness
from mm_assets_tests.conftest import csv_bytes, write_batch

GOOD = csv_bytes([("u1", "1", "0", "", ""), ("u2", "2", "0", "Acme", "")])
TRUNCATED = gzip.compress(csv_bytes([(f"t{i}", str(i), "0", "", "") for i in range(300)]))[:60]


def materialise(tmp_path, files: dict[str, bytes], accept_partial: str = "false"):
    write_batch(tmp_path, files, name="b1")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(export_batches.name, ["b1"])
    return dg.materialize(
        [
            assets.moloco_export_objects,
            assets.raw_audiences,
            assets.merged_segment_loads,
            assets.s2s_files,
            completeness.batch_is_complete,
            checks.files_conform_to_s2s_spec,
            checks.outbox_matches_manifest,
        ],
        partition_key="b1",
        instance=instance,
        raise_on_error=False,
        resources={
            "storage": BatchStorage(
                export_dir=str(tmp_path / "export"),
                work_dir=str(tmp_path / "work"),
                outbox_dir=str(tmp_path / "outbox"),
            ),
            "s2s": S2sFileSettings(
                partner_name="P", segment_namespace="ep", accept_partial_batches=accept_partial
            ),
            "moloco_source": MolocoExportSource(),
        },
    )


def completeness_of(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "batch_is_complete"
    ]
    return evaluation


def test_a_truncated_gzip_makes_the_batch_incomplete_and_nothing_is_built(tmp_path):
    result = materialise(tmp_path, {"good.csv": GOOD, "cut.csv.gz": TRUNCATED})
    evaluation = completeness_of(result)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert evaluation.metadata["files_unreadable"].value == 1
    [unreadable] = table_rows(evaluation.metadata["unreadable_files"].value)
    assert unreadable["file"] == "cut.csv.gz"
    assert result.asset_materializations_for_node("s2s_files") == []
    assert not list((tmp_path / "outbox").rglob("*.log.gz"))


def test_a_refused_link_makes_the_batch_incomplete(tmp_path):
    (tmp_path / "elsewhere.csv").write_bytes(GOOD)
    batch = write_batch(tmp_path, {"good.csv": GOOD}, name="b1")
    (batch / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    result = materialise(tmp_path, {})
    assert not completeness_of(result).passed
    unreadable = table_rows(completeness_of(result).metadata["unreadable_files"].value)
    assert [row["file"] for row in unreadable] == ["link.csv"]


def test_partial_batches_accepted_deliberately_build_with_a_warning(tmp_path):
    result = materialise(tmp_path, {"good.csv": GOOD, "cut.csv.gz": TRUNCATED}, "true")
    evaluation = completeness_of(result)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    [built] = result.asset_materializations_for_node("s2s_files")
    assert built.metadata["users"].value == 2


def test_an_empty_file_is_reported_but_the_batch_is_complete(tmp_path):
    result = materialise(
        tmp_path, {"good.csv": GOOD, "empty.csv": b"", "e.csv.gz": gzip.compress(b"")}
    )
    evaluation = completeness_of(result)
    assert evaluation.passed
    assert evaluation.metadata["files_empty"].value == 2
    assert result.success


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MM_ASSETS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MM_ASSETS_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.delenv("MM_ACCEPT_PARTIAL_BATCHES", raising=False)
    return tmp_path


def test_cli_build_of_an_incomplete_batch_exits_3_and_prints_the_counts(cli_env, capsys):
    batch = write_batch(cli_env, {"good.csv": GOOD, "cut.csv.gz": TRUNCATED}, name="b1")
    assert main(["build", str(batch)]) == EXIT_BATCH_INCOMPLETE
    captured = capsys.readouterr()
    assert "file good.csv: 2 rows seen = 2 accepted + 0 quarantined" in captured.out
    assert "unreadable file  cut.csv.gz: cannot be read" in captured.out
    assert "batch incomplete" in captured.err
    # The failed step's cause names the check on its one line (Dagster lists it below).
    assert (
        "failed: raw_audiences_batch_is_complete: 1 blocking asset check failed with ERROR "
        "severity: raw_audiences: batch_is_complete\n"
    ) in captured.err


def test_cli_build_with_a_file_name_that_is_not_utf8_names_it_and_exits_3(cli_env, capsys):
    """The listing, the fingerprint and the reader all take the name as its bytes: the file is
    refused by name and the batch is incomplete, not a crash of the build."""
    batch = write_batch(cli_env, {"good.csv": GOOD}, name="b1")
    (batch / os.fsdecode(b"bad\xffname.csv")).write_bytes(GOOD)
    assert main(["build", str(batch)]) == EXIT_BATCH_INCOMPLETE
    captured = capsys.readouterr()
    assert "file good.csv: 2 rows seen = 2 accepted + 0 quarantined" in captured.out
    assert "unreadable file  bad\\xffname.csv: refused: the file name is not UTF-8" in captured.out


def test_cli_build_accepting_partial_batches_exits_0(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("MM_ACCEPT_PARTIAL_BATCHES", "true")
    batch = write_batch(cli_env, {"good.csv": GOOD, "cut.csv.gz": TRUNCATED}, name="b1")
    assert main(["build", str(batch)]) == 0
    assert "batch_is_complete: FAILED (WARN)" in capsys.readouterr().out
