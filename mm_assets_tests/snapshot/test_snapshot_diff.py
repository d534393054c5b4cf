"""Snapshot mode's diff against the held state (core: reader -> diff -> merge -> writer), proven
on the S2S files written, parsed back: adds with their timestamp, `-1` removals (S2S-TS),
nothing for unchanged members, and the held state advancing only for accepted families."""

from __future__ import annotations

import pytest

from mm_assets.core.audience_state import SnapshotBusy, SnapshotOrderError
from mm_assets.core.snapshot_diff import families_over_threshold
from mm_assets_tests.conftest import NOW
from mm_assets_tests.snapshot.world import SnapshotWorld

IDFA = "6D92078A-8246-4BA4-AE5B-76104861E7DC"

FIRST = [
    # user_id, segment, timestamp, client, device_type
    ("c1", "10", "", "", ""),
    ("c1", "11", "1765000000", "", ""),
    ("c2", "10", "", "", ""),
    ("m1", "20", "", "Acme", ""),  # moves to Beta in the second snapshot
    (IDFA, "30", "", "Acme", "idfa"),
    ("c3", "12", "", "", ""),
]
SECOND = [
    ("c1", "10", "1765100000", "", ""),  # unchanged member (a new timestamp is no change)
    # c1 / 11 left the segment -> removal
    ("c2", "10", "", "", ""),
    ("c2", "13", "", "", ""),  # added
    ("m1", "20", "", "Beta", ""),  # moved: removed from Acme, added to Beta
    (IDFA.lower(), "30", "", "Acme", "IDFA"),  # the same device spelt in another case
    ("c3", "12", "-1", "", ""),  # an explicit removal in a snapshot
    ("c4", "14", "", "", ""),
]
# What the second snapshot sends after the first was accepted: its adds and `-1` loads.
SECOND_LOADS = {
    ("", False, "c1", "11", "-1"),
    ("", False, "c2", "13", "0"),
    ("", False, "c3", "12", "-1"),
    ("", False, "c4", "14", "0"),
    ("Acme", False, "m1", "20", "-1"),
    ("Beta", False, "m1", "20", "0"),
}


def test_first_snapshot_is_all_adds_then_the_second_sends_only_the_difference(tmp_path):
    world = SnapshotWorld(tmp_path)
    first = world.build("batch_1", FIRST)
    assert first.loads == {
        ("", False, "c1", "10", "0"),
        ("", False, "c1", "11", "1765000000"),
        ("", False, "c2", "10", "0"),
        ("", False, "c3", "12", "0"),
        ("Acme", False, "m1", "20", "0"),
        ("Acme", True, IDFA.lower(), "30", "0"),
    }
    assert first.candidate.families["|0"]["adds"] == 4
    world.decide(first)

    second = world.build("batch_2", SECOND)
    assert second.loads == SECOND_LOADS
    families = second.candidate.families
    assert families["|0"] == {
        "held": 4,
        "members": 4,
        "adds": 2,
        "removals": 2,
        "unchanged": 2,
        "resent": 0,
        "unchanged_rows": 2,
        "removal_rows_not_held": 0,
    }
    assert families["Acme|1"]["unchanged"] == 1 and families["Acme|1"]["adds"] == 0
    world.decide(second)
    assert world.held() == {
        ("", False, "c1", "10"),
        ("", False, "c2", "10"),
        ("", False, "c2", "13"),
        ("", False, "c4", "14"),
        ("Beta", False, "m1", "20"),
        ("Acme", True, IDFA.lower(), "30"),
    }
    assert world.state.pointer().last_advanced_batch == "batch_2"


def test_a_family_with_a_rejected_file_keeps_its_state_and_the_next_diff_resends(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    second = world.build("batch_2", SECOND)
    decision = world.decide(second, rejected={"|0"})  # the global cookie file was rejected
    assert "|0" in decision.kept and "Beta|0" in decision.advanced
    assert ("", False, "c1", "11") in world.held()  # MediaMath still holds it

    # The third snapshot equals the second: only what MediaMath did not take is sent again.
    third = world.build("batch_3", SECOND)
    assert third.loads == {
        ("", False, "c1", "11", "-1"),
        ("", False, "c2", "13", "0"),
        ("", False, "c3", "12", "-1"),
        ("", False, "c4", "14", "0"),
    }
    world.decide(third)
    fourth = world.build("batch_4", SECOND)
    assert fourth.loads == set()  # nothing changed: nothing is sent
    assert fourth.candidate.families["|0"]["unchanged"] == 4


def test_a_removal_of_a_member_not_held_is_counted_not_sent(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST[:1]))
    second = world.build(
        "batch_2", [*FIRST[:1], ("c8", "18", "-1", "", ""), ("c8", "18", "0", "", "")]
    )
    assert second.loads == set()
    assert second.candidate.families["|0"]["removal_rows_not_held"] == 2


def test_a_family_that_leaves_entirely_is_removed_everywhere(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    gone = world.build("batch_2", [row for row in FIRST if row[3] != "Acme"])
    assert gone.loads == {
        ("Acme", False, "m1", "20", "-1"),
        ("Acme", True, IDFA.lower(), "30", "-1"),
    }
    world.decide(gone)
    assert not any(agency == "Acme" for agency, *_ in world.held())
    assert "Acme|0" not in world.state.pointer().families


def test_many_new_segments_of_one_user_continue_on_more_lines(tmp_path):
    world = SnapshotWorld(tmp_path)
    rows = [("heavy", str(100000 + i), "1765000000", "", "") for i in range(900)]
    build = world.build("batch_1", rows)  # the world validates every file (S2S-LINE)
    assert len(build.loads) == 900
    assert build.merge.continued_users == 1


def test_seeding_from_an_earlier_snapshot_sends_nothing_and_holds_its_members(tmp_path):
    world = SnapshotWorld(tmp_path, seed_batch="batch_0")
    seed = world.build("batch_0", FIRST)
    assert seed.loads == set()
    world.decide(seed)
    assert len(world.held()) == 6
    second = world.build("batch_2", SECOND)
    assert ("", False, "c1", "11", "-1") in second.loads
    assert not any(load[2] == "c1" and load[3] == "10" for load in second.loads)


def test_unchanged_members_are_resent_once_the_resend_period_passed(tmp_path):
    day = 86400
    start = int(NOW.timestamp())
    world = SnapshotWorld(tmp_path, resend_after_seconds=7 * day)
    world.decide(world.build("batch_1", FIRST[:2], now=start))
    early = world.build("batch_2", FIRST[:2], now=start + 6 * day)
    assert early.loads == set()
    world.decide(early)
    late = world.build("batch_3", FIRST[:2], now=start + 7 * day)
    assert late.loads == {("", False, "c1", "10", "0"), ("", False, "c1", "11", "1765000000")}
    assert late.candidate.families["|0"]["resent"] == 2
    world.decide(late)
    assert world.build("batch_4", FIRST[:2], now=start + 8 * day).loads == set()


def test_a_later_batch_waits_until_the_pending_one_is_decided(tmp_path):
    world = SnapshotWorld(tmp_path)
    first = world.build("batch_1", FIRST)
    with pytest.raises(SnapshotOrderError, match="waits for batch batch_1"):
        world.build("batch_2", SECOND)
    world.build("batch_1", FIRST)  # the pending batch itself may be rebuilt
    first = world.build("batch_1", FIRST)
    world.decide(first)
    world.decide(first)  # a second decision of the same batch is a no-op
    with pytest.raises(SnapshotOrderError, match="older than batch batch_1"):
        world.build("batch_0", FIRST)
    assert world.build("batch_2", SECOND).loads


def test_two_diffs_never_run_at_once(tmp_path):
    world = SnapshotWorld(tmp_path)
    with world.state.lock(), pytest.raises(SnapshotBusy):
        world.build("batch_1", FIRST)


def test_removals_over_the_threshold_name_the_family(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    second = world.build("batch_2", SECOND)
    # global cookies: 2 of 4 held removed (50 %); Acme cookies: 1 of 1
    assert families_over_threshold(second.candidate, 0.20) == ["Acme|0", "|0"]
    assert families_over_threshold(second.candidate, 0.5) == ["Acme|0"]


def test_a_state_bucketed_with_another_hash_is_refused_not_diffed_wrongly(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    pointer = world.state.pointer()
    pointer.hash_probe = (pointer.hash_probe or 0) + 1  # as if DuckDB's hash had changed
    world.state._write_pointer(pointer)
    with pytest.raises(RuntimeError, match="re-seed the state"):
        world.build("batch_2", SECOND)
