"""The `mm-assets` command.

    mm-assets build BATCH_DIR     materialise raw_audiences -> merged_segment_loads -> s2s_files
                                  for one batch folder through Dagster, print a summary
    mm-assets validate FILE...    check built S2S files against every S2S-* rule
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mm_assets.core import s2s_validator
from mm_assets.defs.settings import PROJECT_ROOT


def _instance():
    """The Dagster instance of DAGSTER_HOME (the project folder by default), so runs and the
    batch's partition show in `dagster dev`."""
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    return dg.DagsterInstance.get()


def build(batch_dir: Path) -> int:
    from mm_assets.definitions import build_definitions
    from mm_assets.defs.partitions import export_batches
    from mm_assets.defs.s2s_build.assets import REPORT, load_report
    from mm_assets.defs.s2s_build.sensors import build_s2s_files_job

    batch_dir = batch_dir.resolve()
    if not batch_dir.is_dir():
        print(f"mm-assets build: {batch_dir} is not a folder", file=sys.stderr)
        return 2
    batch = batch_dir.name
    defs = build_definitions(export_dir=str(batch_dir.parent))
    instance = _instance()
    instance.add_dynamic_partitions(export_batches.name, [batch])
    job = defs.resolve_job_def(build_s2s_files_job.name)
    result = job.execute_in_process(
        instance=instance, partition_key=batch, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    storage = defs.resources["storage"]
    print(f"batch {batch}  (run {result.run_id})")
    raw_report = storage.work(batch, "raw_audiences") / REPORT
    if raw_report.exists():
        raw = load_report(raw_report)
        print(f"  rows read        {raw['rows_read']:>12,}")
        print(f"  rows quarantined {raw['rows_quarantined']:>12,}")
        for reason, count in raw["quarantine_reasons"].items():
            print(f"      {count:>8,}  {reason}")
        for name, message in raw["file_issues"]:
            print(f"  unusable file    {name}: {message}")
    if not result.success:
        for event in result.all_events:
            if event.is_failure and event.event_specific_data is not None:
                error = getattr(event.event_specific_data, "error", None)
                if error is not None:
                    print(f"  failed: {error.message.strip()}", file=sys.stderr)
        return 1
    for mat in result.asset_materializations_for_node("s2s_files"):
        meta = mat.metadata
        print(f"  users            {meta['users'].value:>12,}")
        print(f"  files            {meta['files'].value:>12,}")
        print(f"  gz bytes         {meta['gz_bytes'].value:>12,}")
        print(f"  outbox           {meta['outbox'].value}")
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    for evaluation in result.get_asset_check_evaluations():
        state = "passed" if evaluation.passed else "FAILED"
        print(f"  check {evaluation.check_name}: {state}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the S2S files of one batch folder")
    build_cmd.add_argument("batch_dir", type=Path)
    validate_cmd = commands.add_parser("validate", help="validate S2S files", add_help=False)
    validate_cmd.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args.batch_dir)
    return s2s_validator.main(args.args)


if __name__ == "__main__":
    sys.exit(main())
