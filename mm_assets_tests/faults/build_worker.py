"""`python -m mm_assets_tests.faults.build_worker MERGED OUTBOX_BATCH POINT READY`: run the
writer's step of a build, holding still at POINT (after writing READY) until it is SIGKILLed.

POINT is `mid_file` (the first S2S file half written) or `before_publish` (every file and the
manifest written in the new build folder, the outbox link not yet swapped). The hold is a
hook in this test process only; the kill that follows is a real SIGKILL.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mm_assets.core import s2s_writer
from mm_assets.core.line_parts import LinePart
from mm_assets_tests.conftest import make_settings


def _hold(ready: Path) -> None:
    ready.write_text("held")
    while True:
        time.sleep(60)


def main(merged: str, outbox_batch: str, point: str, ready: str) -> int:
    ready_path = Path(ready)
    if point == "before_publish":
        s2s_writer._publish = lambda *args: _hold(ready_path)  # type: ignore[assignment]
    elif point == "mid_file":
        original = s2s_writer._GzipFile.add

        def add(file: s2s_writer._GzipFile, lines_dir: Path, part: LinePart) -> None:
            original(file, lines_dir, part)
            # Past the header and a part of lines, before the trailer: half written.
            file._file.flush()
            _hold(ready_path)

        s2s_writer._GzipFile.add = add  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point}")
    s2s_writer.write_s2s_files(
        Path(merged), Path(outbox_batch), make_settings(threads=1), batch=Path(outbox_batch).name
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
