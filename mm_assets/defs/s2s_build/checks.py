"""Checks on `s2s_files` before anything leaves the machine (blocking: a failing file is never
uploaded). They re-read the files with the independent validator, not the writer's code."""

import hashlib
from collections import Counter

import dagster as dg

from mm_assets.core.s2s_format import SUFFIX
from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build.assets import REPORT, load_report, s2s_files
from mm_assets.defs.s2s_build.metadata import md_table


@dg.asset_check(
    asset=s2s_files,
    blocking=True,
    description="Every built file passes every S2S-* rule (independent validator).",
)
def files_conform_to_s2s_spec(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.AssetCheckResult:
    batch = context.partition_key if context.has_partition_key else None
    outbox = storage.outbox(batch)
    limit = s2s.build_settings().max_file_bytes
    counts: Counter[str] = Counter()
    rows = []
    for built in read_manifest(outbox):
        report = validate_file(outbox / built.name, max_file_bytes=limit)
        counts.update(report.violation_counts)
        rows += [[built.name, v.rule, v.line, v.message] for v in report.violations[:10]]
    return dg.AssetCheckResult(
        passed=not counts,
        metadata={
            "violations": sum(counts.values()),
            "violations_by_rule": dg.MetadataValue.json(dict(counts)),
            "first_violations": dg.MetadataValue.md(
                md_table(["file", "rule", "line", "message"], rows[:50])
            ),
        },
    )


@dg.asset_check(
    asset=s2s_files,
    blocking=True,
    description="The outbox holds exactly the manifest's files, with its sizes and "
    "MD5s, and they carry every merged user and load (nothing lost on the way).",
)
def outbox_matches_manifest(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage
) -> dg.AssetCheckResult:
    batch = context.partition_key
    outbox = storage.outbox(batch)
    manifest = read_manifest(outbox)
    problems = []
    for built in manifest:
        path = outbox / built.name
        if not path.is_file():
            problems.append([built.name, "missing from the outbox"])
            continue
        data = path.read_bytes()
        if len(data) != built.bytes or hashlib.md5(data).hexdigest() != built.md5:
            problems.append([built.name, "bytes or md5 differ from the manifest"])
    listed = {b.name for b in manifest}
    problems += [
        [p.name, "in the outbox but not in the manifest"]
        for p in outbox.glob("*" + SUFFIX)
        if p.name not in listed
    ]
    merged = load_report(storage.work(batch, "merged_segment_loads") / REPORT)
    written_loads = sum(b.loads for b in manifest)
    if written_loads != merged["loads_out"]:
        problems.append(["(batch)", f"{written_loads} loads written, {merged['loads_out']} merged"])
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files": len(manifest),
            "loads_written": written_loads,
            "loads_merged": merged["loads_out"],
            "problems": dg.MetadataValue.md(md_table(["file", "problem"], problems)),
        },
    )
