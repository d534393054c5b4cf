"""The merge groups loads by the 64-bit user key the reader writes with each load: two users
that share a key (a hash collision) must still get their own lines, each with its own loads."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mm_assets.core import segment_merge
from mm_assets.core.bucket_loads import LOAD_SCHEMA, LOADS_SUFFIX
from mm_assets.core.line_parts import read_part_text, read_parts_index
from mm_assets.core.segment_merge import merge_segment_loads
from mm_assets_tests.conftest import make_settings


def write_loads(folder, rows, *, arrow=False):
    """Loads as the reader writes them (Arrow IPC, `arrow`) or as an earlier version did."""
    folder.mkdir(parents=True)
    if arrow:
        agency, mobile, user_id, segment, ts, user_key = zip(*rows, strict=True)
        table = pa.table([user_key, agency, mobile, user_id, segment, ts], schema=LOAD_SCHEMA)
        with pa.ipc.new_file(str(folder / f"part{LOADS_SUFFIX}"), LOAD_SCHEMA) as writer:
            writer.write_table(table)
        return
    agency, mobile, user_id, segment, ts, user_key = zip(*rows, strict=True)
    pq.write_table(
        pa.table(
            {
                "user_key": pa.array(user_key, pa.uint64()),
                "agency": list(agency),
                "client": pa.array([None] * len(rows), pa.string()),
                "mobile": list(mobile),
                "user_id": list(user_id),
                "segment": list(segment),
                "ts": pa.array(ts, pa.int64()),
            }
        ),
        folder / "part.parquet",
    )


def merged_lines(report):
    parts = [p for family in read_parts_index(report.merged_dir).values() for p in family]
    text = b"".join(read_part_text(report.merged_dir, p) for p in parts).decode()
    return sorted(line + "\n" for line in text.splitlines())


@pytest.mark.parametrize("arrow", [True, False])
def test_users_sharing_a_user_key_keep_their_own_lines_and_loads(tmp_path, arrow):
    same_key = 42
    write_loads(
        tmp_path / "loads" / "bucket=0",
        [
            ("", False, "alice", "1", 0, same_key),
            ("", False, "alice", "1", -1, same_key),
            ("", False, "bob", "1", 1765000000, same_key),
            ("", False, "bob", "2", 0, same_key),
            # same user ID, other kind of ID: another user (S2S-MOB), same key again
            ("", True, "alice", "3", 0, same_key),
            ("", False, "carol", "4", 0, 7),
        ],
        arrow=arrow,
    )
    report = merge_segment_loads(tmp_path / "loads", tmp_path / "merged", make_settings())
    lines = merged_lines(report)
    assert sorted(line.split(" ", 1)[0] for line in lines) == ["alice", "alice", "bob", "carol"]
    assert "alice 1:-1\n" in lines and "alice 3:0\n" in lines
    bob = next(line for line in lines if line.startswith("bob "))
    assert set(bob.split()[1:]) == {"1:1765000000", "2:0"}
    assert (report.rows_in, report.loads_out, report.users, report.conflicts) == (6, 5, 4, 1)


def test_loads_read_before_user_keys_existed_still_merge(tmp_path):
    """A batch read by an older version (no user_key column) merges as it did."""
    folder = tmp_path / "loads" / "bucket=0"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "agency": ["", "", "Acme"],
                "mobile": [False, False, True],
                "user_id": ["u1", "u1", "u1"],
                "segment": ["1", "2", "1"],
                "ts": pa.array([0, -1, 0], pa.int64()),
            }
        ),
        folder / "old.parquet",
    )
    report = merge_segment_loads(tmp_path / "loads", tmp_path / "merged", make_settings())
    lines = merged_lines(report)
    assert len(lines) == 2 and "u1 1:0\n" in lines
    assert next(line for line in lines if line != "u1 1:0\n").split()[1:] in (
        ["1:0", "2:-1"],
        ["2:-1", "1:0"],
    )


def test_users_whose_keys_share_their_top_bits_keep_their_own_lines_and_loads(tmp_path):
    """The sort orders rows by their key's top bits first: keys that share them (small keys
    here, all top bits zero) interleave in the sort and must still be told apart exactly."""
    rows = []
    for key in (3, 1, 2):
        for segment in ("9", "10", "2"):
            rows += [
                ("", False, f"user{key}", segment, 1765000000 + key, key),
                ("", False, f"user{key}", segment, 1765000100 + key, key),
            ]
    rows += [("", False, "user1", "5", -1, 1), ("", False, "user1", "5", 0, 1)]
    rows += [("", False, "user2", "5", 0, 2), ("", False, "user2", "5", 17, 2)]
    write_loads(tmp_path / "loads" / "bucket=0", rows, arrow=True)
    report = merge_segment_loads(tmp_path / "loads", tmp_path / "merged", make_settings())
    lines = merged_lines(report)
    assert lines == [
        "user1 10:1765000101 2:1765000101 5:-1 9:1765000101\n",
        "user2 10:1765000102 2:1765000102 5:0 9:1765000102\n",
        "user3 10:1765000103 2:1765000103 9:1765000103\n",
    ]
    assert (report.rows_in, report.loads_out, report.users, report.conflicts) == (22, 11, 3, 11)


def test_buckets_sorted_side_by_side_give_the_same_lines_as_one_at_a_time(tmp_path):
    """The merge sorts the next buckets on threads while it writes one (BUCKETS_MERGED_AT_ONCE):
    each file family gets the lines of a merge of one bucket at a time, with a bucket of the
    SQL path (Parquet, from an earlier version) and an empty one among them."""
    loads = tmp_path / "loads"
    for bucket in range(6):
        rows = [
            (agency, mobile, f"user-{bucket}-{user}", str(seg), ts, bucket * 1000 + user * 8)
            for user in range(40)
            for agency, mobile in [("Acme", False), ("", bool(user % 2))]
            for seg, ts in [(user % 7, 0), (user % 5 + 10, 1765000000 + user), (3, -1)]
        ]
        rows = [(a, m, u, s, t, k + (2 if m else 0) + (4 if a else 0)) for a, m, u, s, t, k in rows]
        if bucket == 4:
            (loads / f"bucket={bucket}").mkdir(parents=True)  # nothing in this bucket
        else:
            write_loads(loads / f"bucket={bucket}", rows, arrow=bucket != 2)

    def merged_families(threads):
        report = merge_segment_loads(
            loads, tmp_path / f"merged{threads}", make_settings(threads=threads)
        )
        parts = read_parts_index(report.merged_dir)
        text = {
            # A line's loads in any order: the SQL path's string_agg keeps none.
            family: sorted(
                tuple(sorted(line.split()))
                for p in family_parts
                for line in read_part_text(report.merged_dir, p).splitlines()
            )
            for family, family_parts in parts.items()
        }
        return report.users, report.loads_out, text

    one_at_a_time, side_by_side = merged_families(1), merged_families(2)
    assert side_by_side == one_at_a_time
    assert one_at_a_time[0] == 5 * 40 * 2


@pytest.mark.parametrize("family_in_sort", [True, False])
def test_the_sorting_path_gives_each_family_the_lines_of_the_sql_path(
    tmp_path, monkeypatch, family_in_sort
):
    """The sorting path groups a bucket's lines by file family in its sort (or afterwards,
    when the family does not fit the sort word beside the key): each family gets the lines
    the SQL path gives it, with several agencies and both kinds of ID in one bucket, users
    long enough to continue on more lines (S2S-LINE), alone in their family or beside short
    ones, and (when the sort tells families apart) a key that users of two families share."""
    rows = [
        (agency, mobile, f"user{n}", str(n % 9 + 1), [0, -1, 1765000000 + n][n % 3], 1000 + n)
        for n in range(300)
        for agency, mobile in [("", False), ("", True), ("Acme", False), ("Zeta", True)][
            : n % 4 + 1
        ]
    ]
    rows += [("", False, "user0", "1", 1765000005, 1000)]  # a conflict: "add now" wins
    rows += [("Acme", False, "long", str(100_000 + i), 1765000000, 5) for i in range(700)]
    rows += [("Zeta", False, "longer", str(200_000 + i), -1, 6) for i in range(900)]
    rows += [("Acme", True, "shared", "4", 0, 77), ("", True, "shared", "4", 0, 77)]
    if not family_in_sort:
        # 2,353 rows, 1,609 segments and 6 families: 12 + 11 + 3 bits leave the key 38
        monkeypatch.setattr(segment_merge, "MIN_KEY_BITS", 40)
        families = {("", False): 0, ("", True): 1, ("Acme", False): 2, ("Acme", True): 3}
        rows = [(a, m, u, s, t, k * 8 + families.get((a, m), 4)) for a, m, u, s, t, k in rows]
    write_loads(tmp_path / "loads" / "bucket=0", rows, arrow=True)
    # merged by sorting, not handed to the SQL path
    assert segment_merge._sorted_user_lines(tmp_path / "loads" / "bucket=0") is not None

    def merged(out: str):
        report = merge_segment_loads(tmp_path / "loads", tmp_path / out, make_settings())
        # Per family, each user's loads and lines: the SQL path's string_agg keeps no order
        # of loads, so a continued user's loads may be split at other places.
        users: dict[tuple[str, bool], dict[str, tuple[list[str], int]]] = {}
        for family, family_parts in read_parts_index(report.merged_dir).items():
            users[family] = {}
            for p in family_parts:
                for line in read_part_text(report.merged_dir, p).decode().splitlines():
                    user, *loads = line.split(" ")
                    seen, lines = users[family].get(user, ([], 0))
                    users[family][user] = (sorted(seen + loads), lines + 1)
        counts = (report.rows_in, report.loads_out, report.users, report.continued_users)
        return counts, report.conflicts, {k: vars(v) for k, v in report.by_file.items()}, users

    by_sorting = merged("sorted")
    monkeypatch.setattr(segment_merge, "_sorted_user_lines", lambda bucket: None)
    assert merged("sql") == by_sorting
    counts, conflicts, _, users = by_sorting
    assert counts[2:] == (750 + 4, 2) and conflicts == 1
    assert users[("Zeta", False)]["longer"][1] == 2  # alone in its family, on two lines
    assert users[("Acme", False)]["long"][1] == 2 and len(users[("Acme", False)]) == 151
    assert users[("Acme", True)]["shared"] == users[("", True)]["shared"] == (["4:0"], 1)
