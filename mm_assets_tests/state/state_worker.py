"""A worker on its own "machine" (its own process and state folders) using the shared state.

    python -m mm_assets_tests.state.state_worker names OUTBOX COUNT READY GO
    python -m mm_assets_tests.state.state_worker rotate STATE_DIR SPACING COUNT READY GO
    python -m mm_assets_tests.state.state_worker hold-build OUTBOX READY
    python -m mm_assets_tests.state.state_worker hold-rotation STATE_DIR READY

The database comes from `MM_DELIVERY_LEDGER_URL`, as in a deployment. READY is touched when
the worker is ready; with GO it then waits for GO to exist, so two workers start together.
Results are printed one per line.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mm_assets.clients.moloco_export.key_rotation import rotation_lock
from mm_assets.state.build_lock import batch_build_lock
from mm_assets.state.database import configured_url
from mm_assets.state.name_register import open_name_register

# Every worker claims names of this one second, so their claims collide.
NOW = datetime(2026, 11, 20, 6, 0, 0, tzinfo=UTC)
GO_TIMEOUT_S = 120


def _ready_then_go(ready: str, go: str | None) -> None:
    Path(ready).touch()
    if go is None:
        return
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.01)


def main(mode: str, *args: str) -> None:
    if mode == "names":
        outbox, count, ready, go = args
        register = open_name_register(Path(outbox))
        _ready_then_go(ready, go)
        for i in range(int(count)):
            print(register.allocate("Partner", "Agency" if i % 2 else None, NOW), flush=True)
    elif mode == "rotate":
        state_dir, spacing, count, ready, go = args
        lock = rotation_lock(state_dir, float(spacing), configured_url())
        _ready_then_go(ready, go)
        for _ in range(int(count)):
            with lock.held(wait_timeout_s=120):
                lock.wait_for_spacing()
                at = lock.clock()
                lock.record_rotation(at)  # as KeyRotationSession does after each call
                print(f"{at:.6f}", flush=True)
    elif mode == "hold-build":
        outbox, ready = args
        with batch_build_lock(Path(outbox), "batch_1"):
            _ready_then_go(ready, None)
            time.sleep(600)
    elif mode == "hold-rotation":
        state_dir, ready = args
        with rotation_lock(state_dir, 0.0, configured_url()).held():
            _ready_then_go(ready, None)
            time.sleep(600)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(*sys.argv[1:])
