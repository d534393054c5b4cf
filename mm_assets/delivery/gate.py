"""The delivery gate: a file leaves only if the checks of the build that made it passed.

A blocking Dagster check stops the steps of its own run only. Delivery can be started later by
automation, the UI or the CLI, so each build check records what it approved beside the build,
in the batch's outbox (`.approvals/<check>.json`): whether it passed, the SHA-256 of the
manifest it read (which names the exact build: file names, sizes, md5s, `built_at`) and the md5
of every file it approved. Before sending, `upload_receipts` asks `refusals`: a file is refused,
with the check named, when a required check has not run on this build, failed on it, or
approved other bytes than the ones now in the outbox (a file changed after its build).

No Dagster import here (DESIGN.md, layer 2): the checks and the asset call these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.s2s_writer import MANIFEST

APPROVALS = ".approvals"  # hidden: neither an S2S name nor a batch
# The blocking checks on `s2s_files` (mm_assets/defs/s2s_build/checks.py), by name.
SPEC_CHECK = "files_conform_to_s2s_spec"
MANIFEST_CHECK = "outbox_matches_manifest"
REQUIRED_CHECKS = (SPEC_CHECK, MANIFEST_CHECK)
_CHUNK = 1 << 20  # streamed hashing: memory stays flat for 4 GB files


@dataclass(frozen=True)
class Approval:
    """One build check's verdict on one build of a batch."""

    check: str
    passed: bool
    manifest_sha256: str
    files: dict[str, str]  # file name -> md5 the check approved
    run_id: str
    evaluated_at: str
    summary: str  # why it failed, for the refusal message


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(outbox: Path) -> str:
    """The build's identity: "" when the outbox has no manifest."""
    path = outbox / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def record_approval(
    outbox: Path,
    check: str,
    *,
    passed: bool,
    manifest_digest: str,
    files: Mapping[str, str],
    run_id: str,
    now: datetime,
    summary: str = "",
) -> Approval:
    """Write a check's verdict atomically (a reader sees the old one or the new one).

    `manifest_digest` is the digest of the manifest the check read before it looked at the
    files, so a rebuild during the check cannot be approved by it.
    """
    approval = Approval(
        check=check,
        passed=passed,
        manifest_sha256=manifest_digest,
        files=dict(files),
        run_id=run_id,
        evaluated_at=now.isoformat(),
        summary=summary,
    )
    folder = outbox / APPROVALS
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{check}.{os.getpid()}.tmp"
    temp.write_text(json.dumps(asdict(approval), indent=2, sort_keys=True))
    os.replace(temp, folder / f"{check}.json")
    return approval


def load_approval(outbox: Path, check: str) -> Approval | None:
    path = outbox / APPROVALS / f"{check}.json"
    try:
        data = json.loads(path.read_text())
        return Approval(**data)
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: not approved


def _batch_problem(approval: Approval | None, check: str, digest: str) -> str:
    if approval is None:
        return f"check {check} has not run on this build"
    if approval.manifest_sha256 != digest:
        return f"check {check} approved another build of this batch, not this one"
    if not approval.passed:
        return f"check {check} failed on this build ({approval.summary or 'see the check'})"
    return ""


def refusals(
    outbox: Path, files: Sequence[OutgoingFile], required: Sequence[str] = REQUIRED_CHECKS
) -> dict[str, str]:
    """{file name: why it must not be sent} for the files the build's checks do not cover.

    A file missing from the result may be sent: every required check passed on this build and
    approved exactly the bytes now at its path (hashed here, just before delivery).
    """
    digest = manifest_sha256(outbox)
    approvals = {check: load_approval(outbox, check) for check in required}
    problems = [p for c in required if (p := _batch_problem(approvals[c], c, digest))]
    if problems:
        reason = "not sent: " + "; ".join(problems)
        return {f.name: reason for f in files}
    approved = {check: approval.files for check, approval in approvals.items() if approval}
    refused: dict[str, str] = {}
    for file in files:
        unapproved = [c for c in required if approved[c].get(file.name) != file.md5_hex]
        if unapproved:
            refused[file.name] = f"not sent: check {unapproved[0]} did not approve this file"
            continue
        try:
            actual = file_md5(file.path)
        except OSError as exc:
            refused[file.name] = f"not sent: cannot read it from the outbox ({exc.strerror})"
            continue
        if actual != file.md5_hex:
            refused[file.name] = (
                f"not sent: the file changed after check {MANIFEST_CHECK} approved it "
                f"(md5 now {actual}, approved {file.md5_hex})"
            )
    return refused
