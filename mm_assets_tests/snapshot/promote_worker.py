"""A process that promotes a candidate and is killed (SIGKILL, no clean-up) at a chosen point:

- `mid-version`: while the new version's bucket files are being written;
- `before-pointer`: the new version folder is complete, the pointer not yet swapped;
- `after-pointer`: the pointer names the new version, the old one not yet removed.

Usage: python -m mm_assets_tests.snapshot.promote_worker STATE_DIR CANDIDATE_DIR POINT
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mm_assets.core import audience_state
from mm_assets.core.audience_state import AudienceState, Candidate


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(state_dir: str, candidate_dir: str, point: str) -> None:
    state = AudienceState(Path(state_dir))
    if point == "mid-version":
        calls = {"n": 0}
        real_fsync = audience_state.fsync_path

        def fsync_then_die(path: Path) -> None:
            real_fsync(path)
            calls["n"] += 1
            if calls["n"] == 2:
                _die()

        audience_state.fsync_path = fsync_then_die
    elif point == "before-pointer":
        # The version folder is complete; the pointer swap never happens.
        AudienceState._write_pointer = lambda self, pointer: _die()
    elif point == "after-pointer":
        AudienceState._remove_orphans = lambda self, pointer: _die()
    candidate = Candidate.load(Path(candidate_dir))
    families = set(candidate.families) | set(state.pointer().families)
    state.promote(candidate, families, decided_at="2026-11-20T12:00:00+00:00")
    print("promoted without dying", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
