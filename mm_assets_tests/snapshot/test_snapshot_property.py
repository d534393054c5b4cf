"""Property: over successive random snapshots with random rejected families, the loads written
(parsed from the S2S files) are exactly a plain Python set model's adds and removals, and the
held state is the model's."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_assets.core.audience_state import family_key
from mm_assets_tests.snapshot.world import SnapshotWorld

USERS = ["u1", "u2", "U2", "AbCd-1", "abcd-1"]  # cookies are case-sensitive, devices are not
SEGMENTS = ["1", "2", "3"]
CLIENTS = ["", "Acme", "Beta"]
DEVICES = ["", "idfa", "GAID"]
TIMESTAMPS = ["", "0", "1765000000", "1766000000", "-1"]

row = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(SEGMENTS),
    st.sampled_from(TIMESTAMPS),
    st.sampled_from(CLIENTS),
    st.sampled_from(DEVICES),
)
snapshot = st.lists(row, max_size=25)
family = st.sampled_from([family_key(c, m) for c in CLIENTS for m in (False, True)])
step = st.tuples(snapshot, st.sets(family, max_size=3))  # (rows, families MediaMath rejects)


def model_members(rows) -> dict[str, dict[tuple[str, str], str]]:
    """The conflict rule in plain Python: -1 anywhere -> not a member; else 0 wins; else max."""
    loads: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for user, segment, ts, client, device in rows:
        mobile = device != ""
        key = (family_key(client, mobile), user.lower() if mobile else user, segment)
        loads[key].append(int(ts or 0))
    members: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
    for (fam, user, segment), values in loads.items():
        if -1 in values:
            continue
        members[fam][(user, segment)] = "0" if 0 in values else str(max(values))
    return members


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=2, max_size=3))
def test_diff_matches_a_set_model_over_successive_snapshots(steps):
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    with tempfile.TemporaryDirectory() as tmp:
        world = SnapshotWorld(Path(tmp), buckets=4)
        for number, (rows, rejected) in enumerate(steps):
            build = world.build(f"batch_{number}", rows)
            members = model_members(rows)
            expected = set()
            for fam in set(members) | set(held):
                agency, mobile = fam.rsplit("|", 1)
                for user, segment in set(members[fam]) - held[fam]:
                    ts = members[fam][(user, segment)]
                    expected.add((agency, mobile == "1", user, segment, ts))
                for user, segment in held[fam] - set(members[fam]):
                    expected.add((agency, mobile == "1", user, segment, "-1"))
            assert build.loads == expected
            world.decide(build, rejected=rejected)
            for fam in set(members) | set(held):
                if fam not in rejected:
                    held[fam] = set(members[fam])
            assert world.held() == {
                (fam.rsplit("|", 1)[0], fam.endswith("|1"), user, segment)
                for fam, pairs in held.items()
                for user, segment in pairs
            }
