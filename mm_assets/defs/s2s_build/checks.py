"""Checks on `s2s_files` before anything leaves the machine. They re-read the files with the
independent validator, not the writer's code, one evaluation per export batch.

Blocking stops the rest of their own run; every later delivery is gated too: each check
records its verdict on this exact build in the outbox (`mm_assets/delivery/gate.py`), and
`upload_receipts` refuses any file they did not approve.
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from mm_assets.core.batch_work import MergeSummary
from mm_assets.core.clock import utc_now
from mm_assets.core.s2s_format import SUFFIX
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.metadata import table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build.assets import s2s_files
from mm_assets.delivery import gate


@dg.asset_check(
    asset=s2s_files,
    name=gate.SPEC_CHECK,
    blocking=True,
    partitions_def=export_batches,
    description="Every built file passes every S2S-* rule (independent validator). "
    "Delivery sends only files this check approved on their build.",
)
def files_conform_to_s2s_spec(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.AssetCheckResult:
    # Imported here: the validator's numpy and pyarrow load in this check's step only.
    from mm_assets.core.s2s_validator_pool import validate_files

    outbox = storage.work_for(context.partition_key).outbox
    digest = gate.manifest_sha256(outbox)
    settings = s2s.build_settings()
    manifest = read_manifest(outbox)
    # The files are independent: validated side by side, one process per core as memory allows.
    reports = validate_files(
        [outbox / built.name for built in manifest],
        max_file_bytes=settings.max_file_bytes,
        memory_budget_bytes=settings.memory_budget_bytes,
        cpus=settings.threads,
    )
    counts: Counter[str] = Counter()
    rows = []
    approved = {}
    for built, report in zip(manifest, reports, strict=True):
        counts.update(report.violation_counts)
        rows += [[built.name, v.rule, v.line, v.message] for v in report.violations[:10]]
        if not report.violations:
            approved[built.name] = built.md5
    gate.record_approval(
        outbox,
        gate.SPEC_CHECK,
        passed=not counts,
        manifest_digest=digest,
        files=approved,
        run_id=context.run.run_id,
        now=utc_now(),
        summary=", ".join(f"{n} {rule}" for rule, n in sorted(counts.items())),
    )
    return dg.AssetCheckResult(
        passed=not counts,
        metadata={
            "violations": sum(counts.values()),
            "violations_by_rule": dg.MetadataValue.json(dict(counts)),
            "first_violations": table(["file", "rule", "line", "message"], rows[:50]),
        },
    )


def _streamed_md5s(outbox: Path, names: list[str]) -> dict[str, str | None]:
    """Each named file's md5, hashed in 1 MiB chunks (never a whole file in memory) on
    threads: hashlib lets go of the GIL, so both cores hash. None for a missing file."""

    def md5(name: str) -> str | None:
        path = outbox / name
        return gate.file_md5(path) if path.is_file() else None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(names, pool.map(md5, names), strict=True))


@dg.asset_check(
    asset=s2s_files,
    name=gate.MANIFEST_CHECK,
    blocking=True,
    partitions_def=export_batches,
    description="The outbox holds exactly the manifest's files, with its sizes and "
    "MD5s, and they carry every merged user and load (nothing lost on the way). Delivery "
    "sends a file only while its bytes still have the md5 this check approved.",
)
def outbox_matches_manifest(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage
) -> dg.AssetCheckResult:
    work = storage.work_for(context.partition_key)
    outbox = work.outbox
    digest = gate.manifest_sha256(outbox)
    manifest = read_manifest(outbox)
    problems = []
    approved = {}
    md5s = _streamed_md5s(outbox, [built.name for built in manifest])
    for built in manifest:
        path = outbox / built.name
        if not path.is_file():
            problems.append([built.name, "missing from the outbox"])
            continue
        if path.stat().st_size != built.bytes or md5s[built.name] != built.md5:
            problems.append([built.name, "bytes or md5 differ from the manifest"])
            continue
        approved[built.name] = built.md5
    listed = {b.name for b in manifest}
    problems += [
        [p.name, "in the outbox but not in the manifest"]
        for p in outbox.glob("*" + SUFFIX)
        if p.name not in listed
    ]
    merged = work.load(MergeSummary)
    written_loads = sum(b.loads for b in manifest)
    if written_loads != merged.loads_out:
        problems.append(["(batch)", f"{written_loads} loads written, {merged.loads_out} merged"])
    gate.record_approval(
        outbox,
        gate.MANIFEST_CHECK,
        passed=not problems,
        manifest_digest=digest,
        files=approved,
        run_id=context.run.run_id,
        now=utc_now(),
        summary="; ".join(f"{name}: {problem}" for name, problem in problems[:5]),
    )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files": len(manifest),
            "loads_written": written_loads,
            "loads_merged": merged.loads_out,
            "problems": table(["file", "problem"], problems),
        },
    )
