"""Where one batch's build lives, and what each build step reports (no Dagster import).

The build steps hand each other folders, never names they re-derive: every folder and file
of a batch's build is a property of its `BatchWork`, made once from the roots (`WorkRoots`,
the `BatchStorage` resource's settings) and the batch:

    EXPORT/<batch>/                          the export batch (`export`)
    WORK/<batch>/raw_audiences/              the read step (`read_dir`)
        loads/                               its loads by user bucket (`loads`)
        quarantine.parquet                   the rows it could not use (`quarantine`)
        report.json                          `ReadSummary` (`read_report`)
    WORK/<batch>/merged_segment_loads/       the merge step (`merge_dir`)
        lines/                               one line table per file family (`lines`)
        report.json                          `MergeSummary` (`merge_report`)
    WORK/<batch>/s2s_files/report.json       `WriteSummary` (`write_report`)
    WORK/<batch>/snapshot_candidate/         snapshot mode's candidate state (`candidate`)
    OUTBOX/<batch>                           the published build: files + manifest (`outbox`)

What is inside `loads/` and `lines/` is the reader's and the merge's business; this module
names only where they are. The step summaries are typed, each with one JSON form, versioned:
`SUMMARY_VERSION` 2 writes named fields; a summary without a version (the shape written
before it) still loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar

from mm_assets.core.atomic_files import write_text_atomically

if TYPE_CHECKING:  # the reader and the merge import DuckDB; the summaries only need their fields
    from mm_assets.core.export_reader import ReadReport
    from mm_assets.core.segment_merge import MergeReport

READ_STEP = "raw_audiences"
MERGE_STEP = "merged_segment_loads"
WRITE_STEP = "s2s_files"
CANDIDATE_STEP = "snapshot_candidate"
STEP_REPORT = "report.json"
# Inside a step's folder: the core's reader and merge write here (`read_export_batch`,
# `merge_segment_loads` take the step's folder and use these names).
LOADS = "loads"
QUARANTINE_TABLE = "quarantine.parquet"
LINES = "lines"

SUMMARY_VERSION = 2


@dataclass(frozen=True)
class WorkRoots:
    """The three roots every batch's folders are under (export, work area, outbox)."""

    export: Path
    work: Path
    outbox: Path

    def batch(self, batch: str) -> BatchWork:
        return BatchWork(batch=batch, roots=self)

    def batches_present(self) -> dict[str, float]:
        """Batch -> latest modification time of its work folder or outbox entry (hidden and
        `_` names are the outbox's own: builds, locks, the name register)."""
        found: dict[str, float] = {}
        for root in (self.work, self.outbox):
            if root.is_dir():
                for p in root.iterdir():
                    if p.is_dir() and not p.name.startswith((".", "_")):
                        found[p.name] = max(found.get(p.name, 0.0), p.stat().st_mtime)
        return found


@dataclass(frozen=True)
class BatchWork:
    """Every folder and file of one batch's build (the module docstring shows the layout)."""

    batch: str
    roots: WorkRoots

    @property
    def export(self) -> Path:
        return self.roots.export / self.batch

    @property
    def folder(self) -> Path:
        """The batch's own work folder: every step's output is below it."""
        return self.roots.work / self.batch

    @property
    def read_dir(self) -> Path:
        return self.folder / READ_STEP

    @property
    def loads(self) -> Path:
        return self.read_dir / LOADS

    @property
    def quarantine(self) -> Path:
        return self.read_dir / QUARANTINE_TABLE

    @property
    def merge_dir(self) -> Path:
        return self.folder / MERGE_STEP

    @property
    def lines(self) -> Path:
        return self.merge_dir / LINES

    @property
    def write_dir(self) -> Path:
        return self.folder / WRITE_STEP

    @property
    def candidate(self) -> Path:
        return self.folder / CANDIDATE_STEP

    @property
    def outbox_root(self) -> Path:
        """The outbox root: the batch's build lock and the name register live under it."""
        return self.roots.outbox

    @property
    def outbox(self) -> Path:
        """The published build (a symlink swapped atomically by the writer)."""
        return self.roots.outbox / self.batch

    @property
    def read_report(self) -> Path:
        return self.report_path(ReadSummary)

    @property
    def merge_report(self) -> Path:
        return self.report_path(MergeSummary)

    @property
    def write_report(self) -> Path:
        return self.report_path(WriteSummary)

    def report_path(self, kind: type[StepSummary]) -> Path:
        return self.folder / kind.STEP / STEP_REPORT

    def save(self, summary: StepSummary) -> Path:
        """Write a step's summary in its step folder, whole or not at all (a reader never
        sees half a report)."""
        path = self.report_path(type(summary))
        write_text_atomically(path, summary.to_json())
        return path

    def load(self, kind: type[S]) -> S:
        """The step's summary; FileNotFoundError when the step has not run."""
        return kind.from_json(self.report_path(kind).read_text(encoding="utf-8"))

    def load_if_any(self, kind: type[S]) -> S | None:
        """The step's summary, or None when it is missing or unreadable (a report on a batch
        shows what is there)."""
        try:
            return self.load(kind)
        except (OSError, ValueError, KeyError, TypeError):
            return None


class StepSummary(Protocol):
    STEP: ClassVar[str]

    def to_json(self) -> str: ...

    @classmethod
    def from_json(cls, text: str) -> StepSummary: ...


S = TypeVar("S", bound=StepSummary)


def _dumps(fields: dict[str, Any]) -> str:
    return json.dumps({"version": SUMMARY_VERSION, **fields}, indent=2)


def _loads(text: str) -> tuple[dict[str, Any], int]:
    """The summary's fields and its version (1: written before summaries had one)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a step summary is a JSON object")
    version = int(data.get("version", 1))
    if version > SUMMARY_VERSION:
        raise ValueError(f"step summary version {version} is newer than this code's")
    return data, version


class UnusableFile(NamedTuple):
    """A whole input file that could not be used; `blocks_batch` when it may hold lost rows."""

    file: str
    problem: str
    blocks_batch: bool


@dataclass(frozen=True)
class ReadSummary:
    """What the read step (`raw_audiences`) saw: rows seen = accepted + quarantined, per file."""

    STEP: ClassVar[str] = READ_STEP

    seconds: float  # the core's own time (the benchmark's "read" phase)
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    files: dict[str, dict[str, int]]  # file -> {"rows", "accepted", "quarantined"}
    unusable_files: list[UnusableFile] = field(default_factory=list)
    user_buckets: int | None = None

    @classmethod
    def of(cls, report: ReadReport, seconds: float) -> ReadSummary:
        return cls(
            seconds=round(seconds, 3),
            rows_read=report.rows_read,
            rows_accepted=report.rows_accepted,
            rows_quarantined=report.rows_quarantined,
            quarantine_reasons=dict(report.quarantine_reasons),
            files={name: dict(counts) for name, counts in report.files.items()},
            unusable_files=[
                UnusableFile(i.file, i.message, i.blocks_batch) for i in report.file_issues
            ],
            user_buckets=report.buckets,
        )

    @property
    def unreadable(self) -> list[UnusableFile]:
        """The files that make the batch incomplete (not the merely empty ones)."""
        return [f for f in self.unusable_files if f.blocks_batch]

    def to_json(self) -> str:
        return _dumps(
            {
                "seconds": self.seconds,
                "rows_read": self.rows_read,
                "rows_accepted": self.rows_accepted,
                "rows_quarantined": self.rows_quarantined,
                "quarantine_reasons": self.quarantine_reasons,
                "files": self.files,
                "unusable_files": [f._asdict() for f in self.unusable_files],
                "user_buckets": self.user_buckets,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ReadSummary:
        data, version = _loads(text)
        if version == 1:  # "file_issues": [[file, problem, blocks_batch], ...]
            unusable = [UnusableFile(f, p, bool(b)) for f, p, b in data.get("file_issues") or []]
        else:
            unusable = [
                UnusableFile(f["file"], f["problem"], bool(f["blocks_batch"]))
                for f in data["unusable_files"]
            ]
        return cls(
            seconds=float(data.get("seconds", 0.0)),
            rows_read=int(data["rows_read"]),
            rows_accepted=int(data["rows_accepted"]),
            rows_quarantined=int(data["rows_quarantined"]),
            quarantine_reasons={k: int(v) for k, v in (data["quarantine_reasons"] or {}).items()},
            files={
                name: {k: int(v) for k, v in counts.items()}
                for name, counts in (data["files"] or {}).items()
            },
            unusable_files=unusable,
            user_buckets=data.get("user_buckets"),
        )


class FamilyCounts(NamedTuple):
    """Users, lines and loads of one file family after the merge (S2S-NAME, S2S-MOB)."""

    agency: str  # "(global)" for global data
    ids: str  # "cookie" or "mobile"
    users: int
    lines: int
    loads: int
    text_bytes: int


@dataclass(frozen=True)
class MergeSummary:
    """What the merge step (`merged_segment_loads`) produced, per file family."""

    STEP: ClassVar[str] = MERGE_STEP

    seconds: float
    loads_out: int
    users: int
    conflicts: int
    families: list[FamilyCounts] = field(default_factory=list)

    @classmethod
    def of(cls, report: MergeReport, seconds: float) -> MergeSummary:
        return cls(
            seconds=round(seconds, 3),
            loads_out=report.loads_out,
            users=report.users,
            conflicts=report.conflicts,
            families=[
                FamilyCounts(
                    key.agency or "(global)",
                    "mobile" if key.mobile else "cookie",
                    stats.users,
                    stats.lines,
                    stats.loads,
                    stats.text_bytes,
                )
                for key, stats in report.by_file.items()
            ],
        )

    def to_json(self) -> str:
        return _dumps(
            {
                "seconds": self.seconds,
                "loads_out": self.loads_out,
                "users": self.users,
                "conflicts": self.conflicts,
                "families": [f._asdict() for f in self.families],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MergeSummary:
        data, version = _loads(text)
        rows = data.get("families") or []
        return cls(
            seconds=float(data.get("seconds", 0.0)),
            loads_out=int(data["loads_out"]),
            users=int(data["users"]),
            conflicts=int(data["conflicts"]),
            # version 1: [agency, ids, users, lines, loads, text_bytes] per family
            families=[FamilyCounts(*r) if version == 1 else FamilyCounts(**r) for r in rows],
        )


@dataclass(frozen=True)
class WriteSummary:
    """What the write step (`s2s_files`) published in the outbox."""

    STEP: ClassVar[str] = WRITE_STEP

    seconds: float
    files: int

    @classmethod
    def of(cls, built: Sequence[object], seconds: float) -> WriteSummary:
        return cls(seconds=round(seconds, 3), files=len(built))

    def to_json(self) -> str:
        return _dumps({"seconds": self.seconds, "files": self.files})

    @classmethod
    def from_json(cls, text: str) -> WriteSummary:
        data, _ = _loads(text)
        return cls(seconds=float(data.get("seconds", 0.0)), files=int(data["files"]))
