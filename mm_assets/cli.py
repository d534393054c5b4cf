"""The `mm-assets` command.

mm-assets build BATCH_DIR     launch a run of build_s2s_files (raw_audiences ->
                              merged_segment_loads -> s2s_files) for one batch folder in the
                              code location, wait for it, print a summary
mm-assets validate FILE...    check built S2S files against every S2S-* rule
mm-assets deliver BATCH       launch a run of deliver_s2s_files (upload_receipts): send the
                              built files the checks approved (quotas, receipts, exactly
                              once) and print what happened
mm-assets sandbox             run the local MediaMath sandbox (SFTP drop, CFT) until stopped
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


def _run(job_name: str, batch: str):
    """Launch one job run for one batch partition in the code location, and wait for it."""
    from mm_assets.defs.launch import launch_and_wait

    # The terminal shows the summary below; the run's own events are in the UI.
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    outcome = launch_and_wait(_instance(), job_name, batch, run_config=quiet)
    print(f"batch {batch}  (run {outcome.run_id})")
    return outcome


def _report_failures_and_checks(outcome) -> int:
    import dagster as dg

    for message in outcome.failures:
        print(f"  failed: {message}", file=sys.stderr)
    evaluations = outcome.check_evaluations
    for evaluation in evaluations:
        state = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        print(f"  check {evaluation.check_name}: {state}")
    # A warning (files deferred by the quota, MediaMath still processing) is not a failure.
    failed = [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    return 0 if outcome.success and not failed else 1


def build(batch_dir: Path) -> int:
    from mm_assets.defs.resources import default_batch_storage
    from mm_assets.defs.s2s_build.assets import REPORT, load_report
    from mm_assets.defs.s2s_build.jobs import build_s2s_files_job

    batch_dir = batch_dir.resolve()
    if not batch_dir.is_dir():
        print(f"mm-assets build: {batch_dir} is not a folder", file=sys.stderr)
        return 2
    batch = batch_dir.name
    # The run reads its settings from the environment (the code server inherits it).
    previous = os.environ.get("MM_ASSETS_EXPORT_DIR")
    os.environ["MM_ASSETS_EXPORT_DIR"] = str(batch_dir.parent)
    try:
        outcome = _run(build_s2s_files_job.name, batch)
        storage = default_batch_storage().process_config_and_initialize()
    finally:
        if previous is None:
            del os.environ["MM_ASSETS_EXPORT_DIR"]
        else:
            os.environ["MM_ASSETS_EXPORT_DIR"] = previous
    raw_report = storage.work(batch, "raw_audiences") / REPORT
    if raw_report.exists():
        raw = load_report(raw_report)
        print(f"  rows read        {raw['rows_read']:>12,}")
        print(f"  rows quarantined {raw['rows_quarantined']:>12,}")
        for reason, count in raw["quarantine_reasons"].items():
            print(f"      {count:>8,}  {reason}")
        for name, message in raw["file_issues"]:
            print(f"  unusable file    {name}: {message}")
    files = outcome.materializations.get("s2s_files")
    if files is not None:
        meta = files.metadata
        print(f"  users            {meta['users'].value:>12,}")
        print(f"  files            {meta['files'].value:>12,}")
        print(f"  gz bytes         {meta['gz_bytes'].value:>12,}")
        print(f"  outbox           {meta['outbox'].value}")
    return _report_failures_and_checks(outcome)


def deliver(batch: str) -> int:
    from mm_assets.defs.delivery.sensors import deliver_s2s_files_job

    outcome = _run(deliver_s2s_files_job.name, batch)
    receipts = outcome.materializations.get("upload_receipts")
    if receipts is not None:
        meta = {k: v.value for k, v in receipts.metadata.items()}
        counts = ", ".join(f"{k[6:]}={v}" for k, v in meta.items() if k.startswith("files_"))
        print(f"  transport {meta['transport']}: {counts}")
        print(
            f"  quota left: {meta['quota_files_left_this_hour']} files this hour, "
            f"{meta['quota_bytes_left_today']:,} bytes today"
        )
        if meta["next_send_after"]:
            print(f"  deferred or retried files go after {meta['next_send_after']}")
    return _report_failures_and_checks(outcome)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `validate` and `sandbox` own their arguments (their modules parse them).
    if argv[:1] == ["validate"]:
        return s2s_validator.main(argv[1:])
    if argv[:1] == ["sandbox"]:
        from mm_assets.sandbox.run_sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="mm-assets",
        description=__doc__.splitlines()[0],
        epilog="also: mm-assets validate FILE..., mm-assets sandbox",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the S2S files of one batch folder")
    build_cmd.add_argument("batch_dir", type=Path)
    deliver_cmd = commands.add_parser("deliver", help="deliver a built batch to MediaMath")
    deliver_cmd.add_argument("batch")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args.batch_dir)
    return deliver(args.batch)


if __name__ == "__main__":
    sys.exit(main())
