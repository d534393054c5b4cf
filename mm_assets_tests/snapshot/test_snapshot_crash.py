"""A crash between MediaMath's acceptance and the state write (a real SIGKILL of the promoting
process at three points) neither loses nor double-applies the diff: the state is the old one
or the new one, the decision is re-applied exactly once, and the next diff is right."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from mm_assets.core.audience_state import VERSIONS
from mm_assets_tests.snapshot.test_snapshot_diff import FIRST, SECOND
from mm_assets_tests.snapshot.world import SnapshotWorld

THIRD = [*SECOND, ("c9", "19", "", "", "")]


@pytest.mark.parametrize("point", ["mid-version", "before-pointer", "after-pointer"])
def test_killed_promotion_is_applied_once_and_the_next_diff_is_right(tmp_path, point):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    second = world.build("batch_2", SECOND)
    held_before = world.held()

    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "mm_assets_tests.snapshot.promote_worker",
            str(world.state.folder),
            str(second.candidate.folder),
            point,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr

    pointer = world.state.pointer()
    if point == "after-pointer":
        assert pointer.last_advanced_batch == "batch_2" and pointer.pending_batch is None
    else:
        # Died before the swap: nothing advanced, the batch still waits for its decision.
        assert pointer.pending_batch == "batch_2" and world.held() == held_before
    # The lead re-runs mediamath_audience_state: applied exactly once.
    decision = world.decide(second)
    assert decision.already_applied == (point == "after-pointer")
    expected_after_second = {
        ("", False, "c1", "10"),
        ("", False, "c2", "10"),
        ("", False, "c2", "13"),
        ("", False, "c4", "14"),
        ("Beta", False, "m1", "20"),
        ("Acme", True, "6d92078a-8246-4ba4-ae5b-76104861e7dc", "30"),
    }
    assert world.held() == expected_after_second
    assert [p.name for p in (world.state.folder / VERSIONS).iterdir()] == [
        world.state.pointer().version
    ]  # the crashed write's orphan is gone
    assert world.state.pointer().history[-1]["batch"] == "batch_2"
    assert sum(1 for h in world.state.pointer().history if h["batch"] == "batch_2") == 1

    third = world.build("batch_3", THIRD)
    assert third.loads == {("", False, "c9", "19", "0")}
