"""The merge's compressed line parts and the files the writer joins from them (line_parts.py):
each file is one standard gzip member whatever reads it, parts hold whole users, a family is
split at part boundaries under the size limit, and the bytes stay at or under zlib level 6."""

from __future__ import annotations

import gzip
import importlib.util
import random
import zlib
from collections import Counter
from pathlib import Path

import pytest

from mm_assets.core import segment_merge
from mm_assets.core.line_parts import PARTS_INDEX, read_part_text, read_parts_index
from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_writer import write_s2s_files
from mm_assets_tests.conftest import csv_bytes, make_settings, parse_s2s, run_build, write_batch

GENERATOR = Path(__file__).resolve().parents[2] / "benchmarks" / "generate_export.py"


def build(tmp_path, rows, **overrides):
    batch = write_batch(tmp_path, {"part.csv": csv_bytes(rows)})
    return run_build(
        batch, tmp_path / "work", make_settings(**overrides), outbox_root=tmp_path / "outbox"
    )


def audience(users: int, seed: int = 7) -> list[tuple[str, str, str, str, str]]:
    """Users with 1-12 loads each, over two families, and one user long enough to continue
    on more lines (S2S-LINE)."""
    rnd = random.Random(seed)
    rows = []
    for n in range(users):
        user = f"{rnd.getrandbits(64):016x}-{n}"
        agency = "Acme" if n % 3 == 0 else ""
        for _ in range(rnd.randint(1, 12)):
            ts = rnd.choice(["0", "-1", str(1_765_000_000 + rnd.randrange(86_400))])
            rows.append((user, str(rnd.randrange(1, 5000)), ts, agency, ""))
    rows += [("longuser", str(100_000 + i), "1765000000", "", "") for i in range(700)]
    return rows


def parts_of(merge):
    return read_parts_index(merge.merged_dir)


def test_each_file_is_one_gzip_member_that_zlib_reads_whole(tmp_path):
    result = build(tmp_path, audience(3000), max_file_bytes=20_000)
    parts = sum(len(family) for family in parts_of(result.merge).values())
    assert parts > len(result.built) > 2  # files joined from several parts each
    for built in result.built:
        data = (result.outbox / built.name).read_bytes()
        member = zlib.decompressobj(31)
        text = member.decompress(data) + member.flush()
        assert member.eof and member.unused_data == b""  # one member, nothing after it
        assert text == zlib.decompress(data, 31) == gzip.decompress(data)
        assert text.startswith(b"Version: ") and text.endswith(b"\n")
        assert len(text.splitlines()) - text.split(b"\n\n", 1)[0].count(b"\n") - 2 == built.lines
        assert validate_file(result.outbox / built.name, max_file_bytes=20_000).ok


@pytest.mark.parametrize("sql_batch_rows", [None, 97])
def test_parts_hold_whole_users_and_their_index_figures_are_their_text(
    tmp_path, monkeypatch, sql_batch_rows
):
    if sql_batch_rows:
        # The SQL path, 97 users a batch: a bucket's lines come in many batches, each cut
        # into its own parts (the sorting path cuts a bucket's families at once).
        monkeypatch.setattr(segment_merge, "_sorted_user_lines", lambda bucket: None)
        monkeypatch.setattr(segment_merge, "LINES_BATCH_ROWS", sql_batch_rows)
    result = build(tmp_path, audience(2000), max_file_bytes=4096)
    seen: Counter[tuple[str, bool, str]] = Counter()
    long_parts = 0
    for (agency, mobile), family in parts_of(result.merge).items():
        assert len(family) > 1
        for part in family:
            text = read_part_text(result.merge.merged_dir, part)
            assert text.endswith(b"\n")
            lines = text.decode().splitlines()
            users = [line.split(" ", 1)[0] for line in lines]
            # a user's lines are consecutive and all in this part
            runs = sum(1 for i, u in enumerate(users) if i == 0 or users[i - 1] != u)
            assert runs == len(set(users))
            seen.update((agency, mobile, u) for u in set(users))
            long_parts += "longuser" in users
            assert (part.users, part.lines) == (len(set(users)), len(lines))
            assert part.loads == sum(len(line.split(" ")) - 1 for line in lines)
            assert (part.text_bytes, part.crc32) == (len(text), zlib.crc32(text))
            assert part.gz_bytes == (result.merge.merged_dir / part.path).stat().st_size
    assert long_parts == 1 and result.merge.continued_users == 1
    assert max(seen.values()) == 1  # no user in two parts
    assert len(seen) == result.merge.users


def test_a_family_split_under_a_small_limit_packs_whole_parts_into_each_file(tmp_path):
    limit = 4096
    rows = audience(2000)
    result = build(tmp_path, rows, max_file_bytes=limit)
    parts = parts_of(result.merge)
    assert sum(map(len, parts.values())) > len(result.built)  # several parts share a file
    users: set[tuple[str, bool, str]] = set()
    loads = 0
    for built in result.built:
        path = result.outbox / built.name
        assert path.stat().st_size == built.bytes <= limit
        assert validate_file(path, max_file_bytes=limit).ok
        parsed = parse_s2s(path)
        assert not {(built.agency, built.mobile, u) for u in parsed.users()} & users
        users |= {(built.agency, built.mobile, u) for u in parsed.users()}
        loads += len(parsed.loads())
    assert len(users) == result.merge.users
    assert loads == sum(f.loads for f in result.built) == result.merge.loads_out


def benchmark_export(rows: int, folder: Path) -> Path:
    """The benchmark's generated export (benchmarks/generate_export.py), whose shape (UUID
    users, ~5,000 skewed segment codes, mostly "add now") chose the gzip level."""
    spec = importlib.util.spec_from_file_location("generate_export", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_export(rows, folder, files=1)


def test_gz_bytes_stay_at_or_under_zlib_level_6_on_the_same_text(tmp_path):
    batch = benchmark_export(100_000, tmp_path / "batch_1")
    result = run_build(batch, tmp_path / "work", make_settings())
    ours = theirs = 0
    for built in result.built:
        data = (result.outbox / built.name).read_bytes()
        ours += len(data)
        theirs += len(gzip.compress(gzip.decompress(data), compresslevel=6, mtime=0))
    assert ours <= theirs


def test_the_lines_of_an_unfinished_merge_are_refused_before_the_outbox_is_touched(tmp_path):
    result = build(tmp_path, audience(50))
    (result.merge.merged_dir / PARTS_INDEX).unlink()  # the merge's last act, not done
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "outbox").rglob("*"))
    with pytest.raises(FileNotFoundError, match="did not finish"):
        write_s2s_files(result.merge.merged_dir, result.outbox, make_settings(), batch="batch_1")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "outbox").rglob("*")) == before
