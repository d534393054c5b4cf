"""The validator's block path agrees with its per-line path, whatever the file.

`fast_report` either proves a file valid or declines (None) and leaves the explaining to
`exact_report`, the per-line validator every other test exercises. The property: on random
valid files it accepts, with the per-line path's exact report; on random broken ones it
declines or gives that same report; `validate_file` is always the per-line path's report.
Files are built by hand with the standard library's gzip, never with the project's writer.
"""

from __future__ import annotations

import gzip
import random
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_assets.core import s2s_validator_fast as svf
from mm_assets.core.s2s_validator import exact_report, fast_report, validate_file

NAME = "Partner_20240101120000.log.gz"
LIMIT = 8000  # S2S-LINE: every line has fewer than this many characters

# What a test does to a valid file; "valid" ones leave it valid.
VALID_CHANGES = ("none", "no_final_newline", "mixed_id_lengths")
BREAKING_CHANGES = (
    "user_again_later",  # S2S-EFF
    "load_twice_in_line",  # S2S-EFF
    "load_twice_across_lines",  # S2S-EFF
    "split_with_room",  # S2S-EFF: continues although the line had room
    "case_variant_later",  # S2S-EFF under Mobile: 1 (S2S-MOB), valid under Mobile: 0
    "leading_zero_segment",  # S2S-SEG
    "segment_too_big",  # S2S-SEG
    "bad_timestamp",  # S2S-TS
    "tab",  # S2S-FMT
    "carriage_return",  # S2S-FMT
    "double_space",  # S2S-FMT
    "trailing_space",  # S2S-FMT
    "not_ascii",  # S2S-FMT (valid UTF-8 is still checked character by character)
    "blank_line",  # S2S-FMT
    "line_too_long",  # S2S-LINE
    "header_broken",  # S2S-HDR
)


def user_id(rnd: random.Random, mixed_lengths: bool) -> str:
    if mixed_lengths:
        return "".join(rnd.choices(string.ascii_letters + string.digits, k=rnd.randint(1, 40)))
    a, b, c, d, e = (rnd.getrandbits(bits) for bits in (32, 16, 12, 12, 48))
    return f"{a:08x}-{b:04x}-4{c:03x}-a{d:03x}-{e:012x}"


def load(rnd: random.Random, hashed: bool) -> str:
    seg = (
        "".join(rnd.choices(string.ascii_letters + "_-", k=rnd.randint(1, 30)))
        if hashed
        else str(rnd.choice((rnd.randint(0, 99), rnd.randint(0, 2_147_483_647))))
    )
    return f"{seg}:{rnd.choice(('0', '-1', str(rnd.randint(1, 2_000_000_000))))}"


def pack(uid: str, loads: list[str]) -> list[str]:
    """One line per user; a second line only when the first cannot take the next load."""
    lines = [uid]
    for item in loads:
        if len(lines[-1]) + 1 + len(item) < LIMIT:
            lines[-1] += " " + item
        else:
            lines.append(f"{uid} {item}")
    return lines


def build(seed: int, change: str, mobile: bool, hashed: bool) -> bytes:
    rnd = random.Random(seed)
    users: list[tuple[str, list[str]]] = []
    seen_ids: set[str] = set()
    for _ in range(rnd.randint(1, 60)):
        uid = user_id(rnd, change == "mixed_id_lengths")
        if (uid.lower() if mobile else uid) in seen_ids:
            continue
        seen_ids.add(uid.lower() if mobile else uid)
        count = rnd.choice((1, 2, 3, 5, 12, 20)) if rnd.random() < 0.95 else rnd.randint(400, 900)
        loads = list(dict.fromkeys(load(rnd, hashed) for _ in range(count)))
        users.append((uid, loads))
    rows = [line for uid, loads in users for line in pack(uid, loads)]
    pick = rnd.randrange(len(rows))
    if change == "user_again_later" and len(users) > 2:
        rows.append(f"{users[0][0]} {load(rnd, hashed)}")
    elif change == "load_twice_in_line":
        rows[pick] += " " + rows[pick].split(" ")[1]
    elif change == "load_twice_across_lines":
        uid, loads = max(users, key=lambda u: len(u[1]))
        lines = pack(uid, loads)
        if len(lines) > 1:
            first = rows.index(lines[0])
            rows[first + 1] = f"{uid} {loads[0]}" + rows[first + 1][len(uid) :]
    elif change == "split_with_room":
        uid, loads = users[-1]
        rows += [f"{uid} {load(rnd, hashed)}"]
    elif change == "case_variant_later" and len(users) > 2:
        uid = users[0][0]
        rows.append(f"{uid.upper() if uid != uid.upper() else uid.lower()} {load(rnd, hashed)}")
    elif change == "leading_zero_segment":
        rows[pick] += " 0123:0"
    elif change == "segment_too_big":
        rows[pick] += " 2147483648:0"
    elif change == "bad_timestamp":
        rows[pick] += " 7:-2"
    elif change == "tab":
        rows[pick] = rows[pick].replace(" ", "\t", 1)
    elif change == "carriage_return":
        rows[pick] += "\r"
    elif change == "double_space":
        rows[pick] = rows[pick].replace(" ", "  ", 1)
    elif change == "trailing_space":
        rows[pick] += " "
    elif change == "not_ascii":
        rows[pick] = "é" + rows[pick]
    elif change == "blank_line":
        rows.insert(pick, "")
    elif change == "line_too_long":
        rows[pick] += " " + " ".join(f"{i}:0" for i in range(10**6, 10**6 + LIMIT // 9))
    header = [
        "Version: 3",
        f"FileIdentifier: {NAME}",
        "DateCreated: 1704110400",
        "UserNamespace: mm",
        "SegmentNamespace: ep",
        f"Mobile: {int(mobile)}",
    ]
    if hashed or rnd.random() < 0.5:
        header.append(f"HashSegments: {int(hashed)}")
    if change == "header_broken":
        header[0] = "Version:3"
    text = "\n".join([*header, "", *rows]) + "\n"
    if change == "no_final_newline":
        text = text[:-1]
    return text.encode()


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    change=st.sampled_from(VALID_CHANGES + BREAKING_CHANGES),
    mobile=st.booleans(),
    hashed=st.booleans(),
    block=st.sampled_from((64, 1000, 9001, 1 << 20)),
)
def test_block_path_agrees_with_the_per_line_path(
    tmp_path: Path, seed: int, change: str, mobile: bool, hashed: bool, block: int
) -> None:
    path = write(tmp_path, build(seed, change, mobile, hashed))
    exact = exact_report(path)
    fast = fast_report(path, block_bytes=block)
    assert validate_file(path) == exact
    if change in VALID_CHANGES:
        assert exact.ok, exact.violations
        assert fast == exact  # accepted by the block path, with the same counts
    else:
        assert fast is None or fast == exact
        if fast is not None:
            assert fast.ok  # a change that is valid after all (e.g. case under Mobile: 0)


def test_block_path_accepts_a_user_continued_across_blocks(tmp_path: Path) -> None:
    # S2S-EFF / S2S-LINE: 600 loads need two lines; a 1,000-byte block ends inside them.
    rnd = random.Random(7)
    loads = [f"{1_000_000 + i}:1704110400" for i in range(600)]
    rows = [
        *pack("first", [load(rnd, False)]),
        *pack("long", loads),
        *pack("last", [load(rnd, False)]),
    ]
    assert len(rows) == 4
    header = f"Version: 3\nFileIdentifier: {NAME}\nDateCreated: 1\nUserNamespace: mm\n"
    text = header + "SegmentNamespace: ep\nMobile: 0\n\n" + "\n".join(rows) + "\n"
    path = write(tmp_path, text.encode())
    fast = fast_report(path, block_bytes=1000)
    assert fast is not None and fast == exact_report(path)
    assert (fast.users, fast.lines, fast.loads) == (3, 4, 602)

    # The same load on both lines of that user is a violation the block path must not accept.
    rows[2] = "long " + loads[0] + rows[2][len("long") :]
    path = write(
        tmp_path, (header + "SegmentNamespace: ep\nMobile: 0\n\n" + "\n".join(rows) + "\n").encode()
    )
    assert fast_report(path, block_bytes=1000) is None
    assert [v.rule for v in exact_report(path).violations] == ["S2S-EFF"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    change=st.sampled_from(("none", "user_again_later", "case_variant_later")),
    mobile=st.booleans(),
)
def test_users_kept_on_disk_past_the_memory_bound_give_the_same_report(
    tmp_path: Path, seed: int, change: str, mobile: bool
) -> None:
    # Past the in-memory bound, user hashes go to temporary files by range of hash values;
    # a bound of 3 users makes every file of the property above take that way.
    path = write(tmp_path, build(seed, change, mobile, hashed=False))
    exact = exact_report(path)
    limit = svf._USERS_IN_MEMORY
    svf._USERS_IN_MEMORY = 3
    try:
        fast = fast_report(path, block_bytes=1000)
    finally:
        svf._USERS_IN_MEMORY = limit
    if exact.ok:
        assert fast == exact
    else:
        assert fast is None
