"""One batch's build folders and step summaries (`mm_assets/core/batch_work.py`): the layout
is one set of distinct paths under the batch's own folders, the core steps write where it says,
and each summary survives its JSON form, including the form written before summaries had a
version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_assets.core.batch_work import (
    SUMMARY_VERSION,
    BatchWork,
    FamilyCounts,
    MergeSummary,
    ReadSummary,
    UnusableFile,
    WorkRoots,
    WriteSummary,
)
from mm_assets.core.export_reader import read_export_batch
from mm_assets.core.segment_merge import merge_segment_loads
from mm_assets_tests.conftest import csv_bytes, make_settings, write_batch

ROWS = [
    ["u1", "11", "0", "", ""],
    ["u1", "12", "0", "Acme", ""],
    ["u2", "11", "-1", "", ""],
    ["", "11", "0", "", ""],  # no user: quarantined
]


def work_in(root: Path, batch: str = "batch_1") -> BatchWork:
    return WorkRoots(export=root / "export", work=root / "work", outbox=root / "outbox").batch(
        batch
    )


def layout(work: BatchWork) -> dict[str, Path]:
    names = [
        "export",
        "folder",
        "read_dir",
        "loads",
        "quarantine",
        "read_report",
        "merge_dir",
        "lines",
        "merge_report",
        "write_dir",
        "write_report",
        "candidate",
        "outbox",
    ]
    return {name: getattr(work, name) for name in names}


def test_every_path_of_a_batch_is_its_own_and_under_its_folders(tmp_path: Path) -> None:
    work = work_in(tmp_path)
    paths = layout(work)
    assert len(set(paths.values())) == len(paths), "two names for one path"
    assert paths["export"].parent == tmp_path / "export"
    assert paths["outbox"].parent == work.outbox_root == tmp_path / "outbox"
    steps = {"read_dir", "merge_dir", "write_dir", "candidate"}
    for name in steps:
        assert paths[name].parent == work.folder == tmp_path / "work" / "batch_1"
    for name, step in [
        ("loads", "read_dir"),
        ("quarantine", "read_dir"),
        ("read_report", "read_dir"),
        ("lines", "merge_dir"),
        ("merge_report", "merge_dir"),
        ("write_report", "write_dir"),
    ]:
        assert paths[name].parent == paths[step], name
    # Another batch shares none of them (but the roots).
    other = layout(work_in(tmp_path, "batch_2"))
    assert not set(paths.values()) & set(other.values())


def test_the_core_steps_write_where_the_batch_work_says(tmp_path: Path) -> None:
    write_batch(tmp_path, {"part.csv": csv_bytes(ROWS)})
    work = work_in(tmp_path)
    settings = make_settings()
    read = read_export_batch(work.export, work.read_dir, settings)
    merged = merge_segment_loads(work.loads, work.merge_dir, settings)
    assert read.loads_dir == work.loads and work.loads.is_dir()
    assert read.quarantine_path == work.quarantine and work.quarantine.is_file()
    assert merged.merged_dir == work.lines and any(work.lines.iterdir())


def test_summaries_round_trip_through_their_json(tmp_path: Path) -> None:
    write_batch(tmp_path, {"part.csv": csv_bytes(ROWS), "empty.csv": b""})
    work = work_in(tmp_path)
    settings = make_settings()
    read = read_export_batch(work.export, work.read_dir, settings)
    merged = merge_segment_loads(work.loads, work.merge_dir, settings)
    summaries = [
        ReadSummary.of(read, 1.23456),
        MergeSummary.of(merged, 2.5),
        WriteSummary(seconds=0.75, files=3),
    ]
    for summary in summaries:
        path = work.save(summary)
        assert path == work.report_path(type(summary))
        assert json.loads(path.read_text())["version"] == SUMMARY_VERSION
        assert work.load(type(summary)) == summary
    assert [p.name for p in work.read_dir.iterdir() if p.name.startswith(".")] == []

    loaded = work.load(ReadSummary)
    assert loaded.seconds == 1.235
    assert (loaded.rows_read, loaded.rows_accepted, loaded.rows_quarantined) == (4, 3, 1)
    assert loaded.rows_read == loaded.rows_accepted + loaded.rows_quarantined
    assert loaded.files["part.csv"] == {"rows": 4, "accepted": 3, "quarantined": 1}
    assert [f.file for f in loaded.unusable_files] == ["empty.csv"]
    assert loaded.unreadable == []  # an empty file does not make the batch incomplete
    families = {(f.agency, f.ids): f for f in work.load(MergeSummary).families}
    assert set(families) == {("(global)", "cookie"), ("Acme", "cookie")}
    assert families["(global)", "cookie"].loads == 2


def test_a_summary_written_before_versions_still_loads(tmp_path: Path) -> None:
    work = work_in(tmp_path)
    # As `save_report` wrote them: no version, issues and families as lists.
    work.read_dir.mkdir(parents=True)
    work.read_report.write_text(
        json.dumps(
            {
                "seconds": 0.5,
                "rows_read": 5,
                "rows_accepted": 4,
                "rows_quarantined": 1,
                "quarantine_reasons": {"missing user_id": 1},
                "file_issues": [["b.csv.gz", "corrupt gzip", True], ["e.csv", "empty", False]],
                "files": {"a.csv": {"rows": 5, "accepted": 4, "quarantined": 1}},
                "user_buckets": 8,
            }
        )
    )
    work.merge_dir.mkdir(parents=True)
    work.merge_report.write_text(
        json.dumps(
            {
                "seconds": 1.0,
                "loads_out": 7,
                "users": 3,
                "conflicts": 1,
                "families": [["(global)", "cookie", 2, 2, 4, 40], ["Acme", "mobile", 1, 1, 3, 30]],
            }
        )
    )
    work.write_dir.mkdir(parents=True)
    work.write_report.write_text(json.dumps({"seconds": 0.25, "files": 2}))

    read = work.load(ReadSummary)
    assert read.unusable_files == [
        UnusableFile("b.csv.gz", "corrupt gzip", True),
        UnusableFile("e.csv", "empty", False),
    ]
    assert read.unreadable == [UnusableFile("b.csv.gz", "corrupt gzip", True)]
    assert (read.rows_read, read.user_buckets, read.quarantine_reasons) == (
        5,
        8,
        {"missing user_id": 1},
    )
    merged = work.load(MergeSummary)
    assert merged.families == [
        FamilyCounts("(global)", "cookie", 2, 2, 4, 40),
        FamilyCounts("Acme", "mobile", 1, 1, 3, 30),
    ]
    assert (merged.loads_out, merged.users, merged.conflicts) == (7, 3, 1)
    assert work.load(WriteSummary) == WriteSummary(seconds=0.25, files=2)


def test_a_missing_or_unknown_summary_is_reported_as_absent(tmp_path: Path) -> None:
    work = work_in(tmp_path)
    with pytest.raises(FileNotFoundError):
        work.load(ReadSummary)
    assert work.load_if_any(ReadSummary) is None
    work.write_dir.mkdir(parents=True)
    work.write_report.write_text(json.dumps({"version": SUMMARY_VERSION + 1, "files": 1}))
    with pytest.raises(ValueError, match="newer"):
        work.load(WriteSummary)
    assert work.load_if_any(WriteSummary) is None
