"""The held state's layouts and the diff's user keys: a state written before members carried
their user's key (main's named layout) is read, diffed right and advanced; and wherever one
64-bit key would name two users (held or in the snapshot), each still gets its own adds and
removals. Proven on the S2S files written, parsed back."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mm_assets.core.audience_state import (
    MEMBERS_FILE,
    NAMED_COLUMNS,
    USERS_FILE,
    AudienceState,
    is_keyed,
    named_members_sql,
)
from mm_assets.core.snapshot_diff import SnapshotOptions, diff_and_merge
from mm_assets.core.user_buckets import bucket_name
from mm_assets_tests.conftest import NOW, make_settings
from mm_assets_tests.core.test_merge_user_keys import merged_lines, write_loads
from mm_assets_tests.snapshot.test_snapshot_diff import FIRST, SECOND, SECOND_LOADS
from mm_assets_tests.snapshot.world import SnapshotWorld


def rewrite_as_named_layout(world: SnapshotWorld) -> None:
    """The version in force as main wrote it: one members file per bucket with user IDs, no
    user keys, no users file."""
    version = world.state.version_dir()
    names = [column.strip().split(" ")[0] for column in NAMED_COLUMNS.split(",")]
    for index in range(world.state.pointer().buckets):
        folder = version / bucket_name(index)
        table = duckdb.sql(f"SELECT * FROM {named_members_sql(version, index)}").to_arrow_table()
        (folder / USERS_FILE).unlink()
        pq.write_table(table.select(names), folder / MEMBERS_FILE, compression="zstd")
        assert "user_key" not in pq.read_schema(folder / MEMBERS_FILE).names


def test_a_state_written_before_user_keys_is_diffed_right_and_advanced(tmp_path):
    world = SnapshotWorld(tmp_path)
    world.decide(world.build("batch_1", FIRST))
    held = world.held()
    rewrite_as_named_layout(world)
    assert world.held() == held

    second = world.build("batch_2", SECOND)
    assert second.loads == SECOND_LOADS
    world.decide(second, rejected={"|0"})  # |0 stays as held: from the named layout
    assert ("", False, "c1", "11") in world.held()
    third = world.build("batch_3", SECOND)
    assert third.loads == {load for load in SECOND_LOADS if load[0] == ""}
    world.decide(third)  # every family advances: the whole state is in the keyed layout
    version = world.state.version_dir()
    assert all(is_keyed(version, index) for index in range(world.state.pointer().buckets))
    assert world.build("batch_4", SECOND).loads == set()


def user_key(agency: str, mobile: bool, user_id: str) -> int:
    with duckdb.connect() as con:
        return con.execute("SELECT hash(?, ?, ?)", [agency, mobile, user_id]).fetchall()[0][0]


def plant_held_users(
    world: SnapshotWorld, index: int, users: list[tuple[int, str, str, str]]
) -> None:
    """Hold, in bucket `index`, cookie members (key, agency, user, segment) keyed as given (in
    the keyed layout a key names one user per family: members name their user by both)."""
    folder = world.state.version_dir() / bucket_name(index)
    members = pq.read_table(folder / MEMBERS_FILE)
    held_users = pq.read_table(folder / USERS_FILE)
    keys = pa.array([key for key, *_ in users], pa.uint64())
    agencies = [agency for _, agency, _, _ in users]
    n = len(users)
    planted_members = pa.table(
        {
            "user_key": keys,
            "agency": agencies,
            "mobile": [False] * n,
            "segment": [segment for *_, segment in users],
            "ts": pa.array([0] * n, pa.int64()),
            "sent_at": pa.array([int(NOW.timestamp())] * n, pa.int64()),
        }
    )
    planted_users = pa.table(
        {
            "user_key": keys,
            "agency": agencies,
            "mobile": [False] * n,
            "user_id": [user for _, _, user, _ in users],
        }
    )
    pq.write_table(
        pa.concat_tables([members, planted_members.cast(members.schema)]), folder / MEMBERS_FILE
    )
    pq.write_table(
        pa.concat_tables([held_users, planted_users.cast(held_users.schema)]), folder / USERS_FILE
    )


def test_a_held_user_whose_key_names_a_snapshot_user_is_removed_not_taken_for_it(tmp_path):
    world = SnapshotWorld(tmp_path, buckets=1)
    world.decide(world.build("batch_1", [("c1", "10", "", "", "")]))
    # Held: "x" in segment 7, under the key the reader gives the snapshot's new user "b".
    plant_held_users(world, 0, [(user_key("", False, "b"), "", "x", "7")])
    second = world.build("batch_2", [("c1", "10", "", "", ""), ("b", "7", "", "", "")])
    assert second.loads == {("", False, "x", "7", "-1"), ("", False, "b", "7", "0")}
    assert second.candidate.families["|0"]["adds"] == 1
    world.decide(second)
    assert world.held() == {("", False, "c1", "10"), ("", False, "b", "7")}
    assert world.build("batch_3", [("c1", "10", "", "", ""), ("b", "7", "", "", "")]).loads == set()


def test_two_held_users_sharing_a_key_are_each_removed_on_their_own_line(tmp_path):
    world = SnapshotWorld(tmp_path, buckets=1)
    world.decide(world.build("batch_1", [("c1", "10", "", "", "")]))
    plant_held_users(world, 0, [(42, "", "x", "7"), (42, "Acme", "y", "8")])
    second = world.build("batch_2", [("c1", "10", "", "", "")])
    assert second.loads == {("", False, "x", "7", "-1"), ("Acme", False, "y", "8", "-1")}
    world.decide(second)
    assert world.held() == {("", False, "c1", "10")}


def test_snapshot_users_sharing_a_key_get_their_own_adds_and_removals(tmp_path):
    """The merge re-keys a bucket whose users share a key; the diff then keys by name and the
    candidate keeps those members with their user IDs."""
    state = AudienceState(tmp_path / "state", buckets=1)
    options = SnapshotOptions(state_dir=tmp_path / "state")
    settings = make_settings()

    def build(batch: str, rows: list[tuple]) -> list[str]:
        loads = tmp_path / batch / "loads"
        write_loads(loads / "bucket=0", rows)
        merge, candidate = diff_and_merge(
            state,
            batch,
            loads,
            tmp_path / batch / "merged",
            tmp_path / batch / "candidate",
            settings,
            options,
            now=int(NOW.timestamp()),
        )
        state.promote(candidate, set(candidate.families), decided_at=NOW.isoformat())
        return merged_lines(merge)

    shared = 42
    first = build(
        "batch_1", [("", False, "alice", "1", 0, shared), ("", False, "bob", "2", 0, shared)]
    )
    assert first == ["alice 1:0\n", "bob 2:0\n"]
    assert not is_keyed(state.version_dir(), 0)  # two users, one key: the named layout
    second = build(
        "batch_2", [("", False, "alice", "1", 0, shared), ("", False, "carol", "3", 0, shared)]
    )
    assert second == ["bob 2:-1\n", "carol 3:0\n"]
    held = duckdb.sql(
        f"SELECT user_id, segment FROM {named_members_sql(state.version_dir(), 0)}"
    ).fetchall()
    assert sorted(held) == [("alice", "1"), ("carol", "3")]
