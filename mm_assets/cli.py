"""The `mm-assets` command: build, check and deliver MediaMath S2S audience files.

mm-assets build BATCH_DIR     launch a run of build_s2s_files (raw_audiences ->
                              merged_segment_loads -> s2s_files) for one batch folder in the
                              code location, wait for it, print a summary
mm-assets validate FILE...    check built S2S files against every S2S-* rule
mm-assets deliver BATCH       launch a run of deliver_s2s_files (upload_receipts): send the
                              built files the checks approved (quotas, receipts, exactly
                              once) and print what happened
mm-assets attention [BATCH]   list files whose delivery needs a person (in flight, unknown)
mm-assets attention --settle FILE --as delivered|not-delivered
                              record what MediaMath has: a receipt, or "send it again"
mm-assets status [BATCH]      the batch report: rows, files, deliveries, MediaMath's verdicts,
                              quota (latest batch when omitted; --all: one line per batch)
mm-assets approve-snapshot BATCH [--reason TEXT]
                              release a snapshot the safety check blocked (many removals,
                              or an incomplete batch); rebuild it afterwards
mm-assets sandbox             run the local MediaMath sandbox (SFTP drop, CFT) until stopped

A failed command prints its cause once, in one line; `--traceback` (or `-v`) adds the full
trace, which the run's logs in the UI also keep. `mm-assets COMMAND --help` describes each
command's arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

# Nothing of Dagster at import: `mm-assets validate` and `sandbox` need none of it, and
# importing it costs ~1 s of CPU.
from mm_assets.core import s2s_validator

# A batch is one folder name of the export: no path separators, no `.`/`..`.
_BATCH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def _resource(name: str, instance=None):
    """A resource of the code location, resolved as a run would resolve it."""
    from mm_assets.definitions import build_definitions

    return _initialized(build_definitions().resources[name], instance)


def _initialized(resource, instance=None):
    """`resource` with its settings resolved (`EnvVar`s read) and initialized, as in a run.

    `instance`: the command's, when it runs a job anyway. Without one, Dagster makes an
    ephemeral instance to initialize the resource in, each time (in-memory storages, their
    schemas created: ~0.1 s of CPU)."""
    import dagster as dg

    if instance is None:
        return resource.process_config_and_initialize()
    with dg.build_resources({"resource": resource}, instance=instance) as resources:
        return resources.resource


def _batch_error(batch: str) -> str | None:
    if not _BATCH_RE.match(batch) or batch in (".", ".."):
        return (
            f"{batch!r} is not a batch name (one folder name of the export: ASCII letters, "
            f"digits, '.', '_' and '-', not starting with '.' or '-')"
        )
    return None


def _instance():
    """The Dagster instance of DAGSTER_HOME (the project folder by default), so runs and the
    batch's partition show in `dagster dev`."""
    import dagster as dg

    from mm_assets.defs.settings import PROJECT_ROOT

    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    home = os.environ["DAGSTER_HOME"]
    # One instance per DAGSTER_HOME in a command's process: each `DagsterInstance.get()` opens
    # the storages again. Keyed by the folder, so a process that runs commands against several
    # homes (the tests) gets each its own.
    if (instance := _INSTANCES.get(home)) is None:
        with _creating_storage_of(home):
            instance = _INSTANCES[home] = dg.DagsterInstance.get()
    return instance


@contextmanager
def _creating_storage_of(home: str) -> Iterator[None]:
    """Open one Dagster instance of `home` at a time on this machine.

    Dagster's SQLite storages create their tables on first use without a lock: two commands
    started at once on a new (or deleted) storage failed with "table runs already exists",
    or stamped an old schema revision. Once the tables exist, the lock is held a moment.
    """
    import fcntl

    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".mm-assets-storage.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


_INSTANCES: dict[str, object] = {}


def _run(job_name: str, batch: str):
    """Run the job for one batch partition as a run of the code location, in this process."""
    from mm_assets.defs.launch import launch_and_wait

    # The terminal shows the summary below and each failure once; the run's own events
    # (errors with their traces) are in the UI and in `--traceback`.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    instance = _instance()
    with _process_output_to_log(instance):
        outcome = launch_and_wait(instance, job_name, batch, run_config=quiet)
    print(f"batch {batch}  (run {outcome.run_id})")
    return outcome


def _batch_report(batch: str):
    """The batch report (mm_assets/reporting) from the code location's storage and ledger, as
    the `batch_report` asset assembles it."""
    from mm_assets.defs.report.assets import report_for

    return report_for(
        batch,
        _resource("storage"),
        _resource("delivery"),
        _resource("processing_log"),
        now=datetime.now(UTC),
    )


def status(batch: str | None, all_batches: bool) -> int:
    """Print the batch report of `batch` (the latest when None), or one line per batch."""
    from mm_assets.reporting.batch_report import known_batches, render_batch_report

    if batch is not None and (error := _batch_error(batch)):
        print(f"mm-assets status: {error}", file=sys.stderr)
        return 2
    storage = _resource("storage")
    with _resource("delivery").get_ledger() as ledger:
        batches = known_batches(storage.roots(), ledger)
    if all_batches:
        for name in batches:
            print(_batch_report(name).headline)
        print(f"{len(batches)} batch(es)" if batches else "no batch built or delivered yet")
        return 0
    if batch is None and not batches:
        print("no batch built or delivered yet: run `mm-assets build BATCH_DIR`")
        return 0
    if batch is not None and batch not in batches:
        print(f"mm-assets status: nothing is known about batch {batch}", file=sys.stderr)
        return 2
    print(render_batch_report(_batch_report(batch or batches[-1])))
    return 0


def _process_log(instance) -> Path:
    return Path(instance.root_directory) / "logs" / "mm-assets.log"


@contextmanager
def _process_output_to_log(instance) -> Iterator[None]:
    """While a run executes (in this process), what it writes (Dagster's DEBUG engine lines,
    warnings, the output of processes its steps start) goes to a log file instead of the
    terminal, unless --traceback asks for everything."""
    if _TRACEBACK:
        yield
        return
    path = _process_log(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


# Settings whose values must never be printed (invariant 4), whatever text quotes them.
_SECRET_SETTINGS = (
    "MM_SFTP_PASSWORD",
    "MM_MOLOCO_API_KEY",
    "MM_ALERT_WEBHOOK_URL",
    "DAGSTER_PG_PASSWORD",
    "MM_DELIVERY_LEDGER_URL",
)
# `package.module.ClassName: text`, as Dagster records a step's error.
_ERROR_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*): ")
_TRACEBACK = False  # set by main from --traceback / -v


def _shown(text: str) -> str:
    """`text` as the terminal may show it: secrets of the environment redacted."""
    from mm_assets.clients.redaction import redact

    return redact(text, (os.environ.get(name) for name in _SECRET_SETTINGS))


def _cause(message: str) -> str:
    """The first line of an error message, without the exception's module path, and without
    the class of Dagster's errors (`dg.Failure`, an invalid definition), whose messages are
    ours and already in the user's words."""
    lines = message.strip().splitlines() or ["(no message)"]
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        # A list follows (Dagster's failed blocking checks, one asset per line): one line.
        first += " " + "; ".join(line.strip() for line in lines[1:6] if line.strip())
    if match := _ERROR_PREFIX.match(first):
        rest = first[match.end() :]
        ours = match.group(1) == "Failure" or match.group(1).startswith("Dagster")
        first = rest if ours else f"{match.group(1)}: {rest}"
    return _shown(first)


def _report_failures_and_checks(outcome) -> int:
    import dagster as dg

    if outcome.failures:
        failed_steps = _step_failures(outcome.run_id)
        for step_key, error in failed_steps:
            print(f"  failed: {step_key}: {_cause(_innermost(error))}", file=sys.stderr)
        if _TRACEBACK:
            for step_key, error in failed_steps:
                print(f"--- step {step_key} ---", file=sys.stderr)
                print(_shown(error.to_string()), file=sys.stderr)
        else:
            print(
                f"  (the traces: --traceback, or run {outcome.run_id} in the UI; the "
                f"processes' output: {_process_log(_instance())})",
                file=sys.stderr,
            )
    elif not outcome.success:
        # No step failed, yet the run did (its worker died, it was canceled): the UI knows why.
        print(
            f"  failed: run {outcome.run_id} did not finish successfully; its logs in the UI "
            f"say why (the processes' output: {_process_log(_instance())})",
            file=sys.stderr,
        )
    evaluations = outcome.check_evaluations
    for evaluation in evaluations:
        state = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        print(f"  check {evaluation.check_name}: {state}")
    # A warning (files deferred by the quota, MediaMath still processing) is not a failure.
    failed = [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    return 0 if outcome.success and not failed else 1


def _step_failures(run_id: str) -> list[tuple[str, object]]:
    """(step key, error) of each failed step of the run, as its event log keeps them."""
    import dagster as dg

    records = _instance().all_logs(run_id, dg.DagsterEventType.STEP_FAILURE)
    return [(r.step_key, r.dagster_event.event_specific_data.error) for r in records]


def _innermost(error) -> str:
    """The message of an error's deepest cause: a step's own exception, not Dagster's
    "Error occurred while executing op" wrapped around it."""
    while error.cause is not None:
        error = error.cause
    return error.message  # `ClassName: text`


# `mm-assets build` exit codes (README): 0 built and every check passed; 1 a check or a step
# failed; 2 not a batch folder, or another build of it is running; 3 the batch is incomplete
# (a file could not be read).
EXIT_BATCH_INCOMPLETE = 3


def build(batch_dir: Path) -> int:
    import dagster as dg

    from mm_assets.core.batch_work import ReadSummary
    from mm_assets.core.s2s_writer import BuildInProgress, batch_build_lock, delegated_build_lock
    from mm_assets.defs.resources import default_batch_storage
    from mm_assets.defs.s2s_build.jobs import build_s2s_files_job

    batch_dir = batch_dir.resolve()
    if not batch_dir.is_dir():
        print(f"mm-assets build: {batch_dir} is not a folder", file=sys.stderr)
        return 2
    batch = batch_dir.name
    if error := _batch_error(batch):
        print(f"mm-assets build: {error}", file=sys.stderr)
        return 2
    instance = _instance()
    outbox_root = Path(_resource("storage", instance).outbox_dir)
    # The run reads its settings from the environment (the code server inherits it).
    previous = os.environ.get("MM_ASSETS_EXPORT_DIR")
    os.environ["MM_ASSETS_EXPORT_DIR"] = str(batch_dir.parent)
    try:
        # Held for the whole run (all its step processes): a second build of the batch
        # refuses instead of racing; the run's own steps inherit the right to it.
        with batch_build_lock(outbox_root, batch), delegated_build_lock(outbox_root, batch):
            outcome = _run(build_s2s_files_job.name, batch)
        storage = _initialized(default_batch_storage(), instance)
    except BuildInProgress as exc:
        print(f"mm-assets build: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is None:
            del os.environ["MM_ASSETS_EXPORT_DIR"]
        else:
            os.environ["MM_ASSETS_EXPORT_DIR"] = previous
    work = storage.work_for(batch)
    if (raw := work.load_if_any(ReadSummary)) is not None:
        print(f"  rows read        {raw.rows_read:>12,}")
        print(f"  rows quarantined {raw.rows_quarantined:>12,}")
        for reason, count in raw.quarantine_reasons.items():
            print(f"      {count:>8,}  {reason}")
        for name, counts in raw.files.items():
            print(
                f"  file {name}: {counts['rows']:,} rows seen = {counts['accepted']:,} accepted"
                f" + {counts['quarantined']:,} quarantined"
            )
        for name, message, blocks in raw.unusable_files:
            kind = "unreadable file " if blocks else "not read        "
            print(f"  {kind} {name}: {message}")
    files = outcome.materializations.get("s2s_files")
    if files is not None:
        meta = files.metadata
        from mm_assets.reporting.batch_report import render_built_files

        print(f"  users            {meta['users'].value:>12,}")
        print(f"  files            {meta['files'].value:>12,}")
        print(f"  gz bytes         {int(meta['gz_bytes'].value):>12,}")
        print(f"  outbox           {meta['outbox'].value}")
        print("\n".join(render_built_files(work.outbox)))
    status = _report_failures_and_checks(outcome)
    incomplete = [
        e
        for e in outcome.check_evaluations
        if e.check_name == "batch_is_complete"
        and not e.passed
        and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    if incomplete:
        print(
            "  batch incomplete: nothing was built (MM_ACCEPT_PARTIAL_BATCHES=true builds it "
            "anyway)",
            file=sys.stderr,
        )
        return EXIT_BATCH_INCOMPLETE
    return status


def deliver(batch: str) -> int:
    from mm_assets.core.s2s_writer import MANIFEST
    from mm_assets.defs.delivery.sensors import deliver_s2s_files_job

    if error := _batch_error(batch):
        print(f"mm-assets deliver: {error}", file=sys.stderr)
        return 2
    if reason := _resource("delivery").not_ready():
        # Checked before the run, so nothing is launched or registered that cannot work.
        print(f"mm-assets deliver: {_shown(reason)}", file=sys.stderr)
        return 2
    outbox = _resource("storage").outbox(batch)
    if not (outbox / MANIFEST).is_file():
        # Checked before the run, so a mistyped batch registers no partition.
        print(
            f"mm-assets deliver: batch {batch} has not been built (no {outbox / MANIFEST}); "
            f"run `mm-assets build` first",
            file=sys.stderr,
        )
        return 2
    outcome = _run(deliver_s2s_files_job.name, batch)
    receipts = outcome.materializations.get("upload_receipts")
    if receipts is not None:
        from mm_assets.reporting.batch_report import render_quota

        meta = {k: v.value for k, v in receipts.metadata.items()}
        by_status = meta.get("names_by_status") or {}
        print(
            f"  transport {meta['transport']}: "
            + ", ".join(f"{s}={len(n)}" for s, n in by_status.items())
        )
        for state, names in by_status.items():
            for name in names:
                print(f"    {state:<17} {name}")
        report = _batch_report(batch)
        print(f"  mediamath: {report.verdict}")
        print("\n".join(render_quota(report)))
    return _report_failures_and_checks(outcome)


def attention(batch: str | None, settle: str | None, settle_as: str | None) -> int:
    """List in-flight files (a run died, or MediaMath's answer is unknown), or settle one."""
    from mm_assets.clients.transport import UploadResult
    from mm_assets.delivery.ledger import owner_is_dead

    if batch is not None and (error := _batch_error(batch)):
        print(f"mm-assets attention: {error}", file=sys.stderr)
        return 2
    with _resource("delivery").get_ledger() as ledger:
        if settle is not None:
            flight = ledger.in_flight_record(settle)
            if flight is None:
                print(f"mm-assets attention: {settle} is not in flight", file=sys.stderr)
                return 2
            if settle_as == "delivered":
                ledger.complete(settle, UploadResult(settle, flight.bytes, 0), datetime.now(UTC))
                print(f"{settle}: receipt written (MediaMath has it); it is not sent again")
            else:
                ledger.abandon(settle)
                print(f"{settle}: released; the next delivery of {flight.batch} sends it")
            return 0
        rows = ledger.in_flight(batch)
        for flight in rows:
            owner = ledger.owner(flight.file_name) or "?"
            gone = " (process gone)" if owner != "?" and owner_is_dead(owner) else ""
            print(
                f"{flight.file_name}  batch {flight.batch}  {flight.transport}  "
                f"in flight since {flight.started_at.isoformat()}  by {owner}{gone}"
            )
        print(f"{len(rows)} file(s) need attention" if rows else "nothing needs attention")
    return 0


def approve_snapshot(batch: str, reason: str) -> int:
    """Record a person's approval of a blocked snapshot (shown in the check's metadata)."""
    import getpass

    from mm_assets.core.audience_state import approve_snapshot as record

    problem = _batch_error(batch)
    options = _resource("s2s").snapshot_options()
    if problem or options is None:
        print(f"mm-assets approve-snapshot: {problem or 'MM_EXPORT_MODE is not snapshot'}")
        return 2
    approval = record(
        options.state_dir,
        batch,
        by=getpass.getuser(),
        reason=reason,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    print(
        f"snapshot of {batch} approved by {approval['approved_by']}; build it again "
        "(mm-assets build BATCH_DIR) so the check releases it and it is delivered"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    """One `add_parser` block per command."""
    # On every command, before or after its name (SUPPRESS: a subcommand's default would
    # otherwise undo the flag given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--traceback",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on failure, also print the full trace (the run's logs keep it too)",
    )
    parser = argparse.ArgumentParser(
        prog="mm-assets",
        description=__doc__.splitlines()[0],
        parents=[common],
        epilog="`mm-assets COMMAND --help` describes a command's arguments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build_cmd = commands.add_parser(
        "build",
        parents=[common],
        help="build the S2S files of one batch folder (a run of build_s2s_files)",
        description="Launch a run of build_s2s_files (moloco_export_objects -> raw_audiences "
        "-> merged_segment_loads -> s2s_files + checks) for one batch folder, wait for it and "
        "print rows read and quarantined, users, files and bytes. Exit 0: built and every "
        "check passed; 1: a check or a step failed; 2: not a batch folder, or another build "
        "of it is running; 3: the batch is incomplete (a file could not be read).",
    )
    build_cmd.add_argument(
        "batch_dir",
        type=Path,
        metavar="BATCH_DIR",
        help="the batch folder (its name is the batch; its parent is the export folder)",
    )

    deliver_cmd = commands.add_parser(
        "deliver",
        parents=[common],
        help="deliver a built batch to MediaMath (a run of deliver_s2s_files)",
        description="Launch a run of deliver_s2s_files (upload_receipts + checks) and wait: "
        "send each file the build checks approved once, within the quotas, and print what "
        "was delivered, deferred, retried, refused or failed. Exit 0: delivered (or "
        "deferred); 1: a check or a step failed; 2: not a built batch, or the transport "
        "(the sandbox) is not running.",
    )
    deliver_cmd.add_argument("batch", metavar="BATCH", help="the batch name (a built batch)")

    attention_cmd = commands.add_parser(
        "attention",
        parents=[common],
        help="list or settle files whose delivery needs a person",
        description="List the files whose delivery needs a person (in flight after a killed "
        "run whose outcome cannot be known yet), or settle one with what you found out.",
    )
    attention_cmd.add_argument(
        "batch", nargs="?", metavar="BATCH", help="only this batch (default: every batch)"
    )
    attention_cmd.add_argument("--settle", metavar="FILE", help="the file to settle (with --as)")
    attention_cmd.add_argument(
        "--as",
        dest="settle_as",
        choices=("delivered", "not-delivered"),
        help="delivered: write its receipt (never sent again); not-delivered: release it "
        "(the next deliver sends it)",
    )

    status_cmd = commands.add_parser(
        "status",
        parents=[common],
        help="the batch report: did the audience get to MediaMath?",
        description="Print the batch report: rows read and quarantined (by reason), users "
        "and loads per file family, files with bytes, when and how each was sent, "
        "MediaMath's verdict per file, quota used and left, what waits until when.",
    )
    status_cmd.add_argument(
        "batch", nargs="?", metavar="BATCH", help="a batch name (default: the latest)"
    )
    status_cmd.add_argument("--all", action="store_true", help="one line per batch")

    approve_cmd = commands.add_parser(
        "approve-snapshot",
        parents=[common],
        help="release a snapshot blocked by its removal threshold",
        description="Snapshot mode: record a person's approval of a snapshot that "
        "snapshot_removals_within_threshold blocked (too many removals, or an incomplete "
        "batch); build the batch again and the check releases it.",
    )
    approve_cmd.add_argument("batch", metavar="BATCH", help="the batch name")
    approve_cmd.add_argument("--reason", default="", help="why (kept with the approval)")

    # `validate` and `sandbox` parse their own arguments (their modules own them); listed
    # here for the help: `mm-assets validate --help`, `mm-assets sandbox --help`.
    commands.add_parser(
        "validate",
        add_help=False,
        help="check S2S files (FILE...) against every S2S-* rule; exit 1 on a violation",
    )
    commands.add_parser(
        "sandbox",
        add_help=False,
        help="run the local MediaMath sandbox (SFTP drop, CFT, processing log) until "
        "stopped; --status: is one running?",
    )
    return parser


def _freeze_dagster() -> None:
    """Import Dagster and move every object alive then into the garbage collector's permanent
    generation, which no collection walks or frees: at exit the interpreter otherwise collects
    and frees Dagster's ~110,000 objects one by one (~0.5 s of each command's CPU and wall), and
    each full collection during the run walks them. None of them is garbage: modules live until
    the process exits anyway.

    Only in a command's own process (freezing is for good), and before the code location is
    imported: duckdb's bindings report their types as leaked when they are still alive at exit.
    """
    import gc

    import dagster  # noqa: F401  (imported for its objects, frozen below)

    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    global _TRACEBACK
    is_the_process = argv is None  # run as the command (its console script), not by a caller
    argv = sys.argv[1:] if argv is None else argv
    # `validate` and `sandbox` own their arguments (their modules parse them).
    if argv[:1] == ["validate"]:
        return s2s_validator.main(argv[1:])
    if argv[:1] == ["sandbox"]:
        from mm_assets.sandbox.run_sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    _TRACEBACK = getattr(args, "traceback", False)
    if is_the_process:
        _freeze_dagster()
    try:
        if args.command == "build":
            return build(args.batch_dir)
        if args.command == "deliver":
            return deliver(args.batch)
        if args.command == "status":
            return status(args.batch, args.all)
        if args.command == "approve-snapshot":
            return approve_snapshot(args.batch, args.reason)
        if args.command == "attention":
            if (args.settle is None) != (args.settle_as is None):
                parser.error("--settle FILE and --as delivered|not-delivered go together")
            return attention(args.batch, args.settle, args.settle_as)
        parser.error(f"unknown command {args.command}")
    except KeyboardInterrupt:
        print(f"mm-assets {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # The cause once, in one line; the trace only when asked for.
        if _TRACEBACK:
            import traceback

            print(_shown(traceback.format_exc()), file=sys.stderr, end="")
        print(
            f"mm-assets {args.command}: {_exception_cause(exc)}"
            + ("" if _TRACEBACK else "  (the trace: --traceback)"),
            file=sys.stderr,
        )
        return 1
    return 2


def _exception_cause(exc: BaseException) -> str:
    """The innermost cause of `exc`, in one line: an error loading the code location (raised
    by its code server) names what failed there, not the gRPC plumbing around it."""
    infos = getattr(exc, "user_code_process_error_infos", None)
    if infos:
        return _cause(_innermost(infos[-1]))
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _cause(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
