"""`python -m mm_assets_tests.faults.deliver_worker CONFIG`: deliver files over SFTP with a
ledger, as `mm-assets deliver` does, in a process a fault test can SIGKILL. Prints the
report's rows as JSON when it gets to the end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mm_assets.clients.mediamath_sftp import MediaMathSftp
from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.quota import QuotaLimits
from mm_assets.delivery.deliver import deliver_batch
from mm_assets.delivery.ledger import Ledger


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    files = [
        OutgoingFile(name=f["name"], path=Path(f["path"]), size=f["size"], md5_hex=f["md5"])
        for f in config["files"]
    ]
    with MediaMathSftp(**config["transport"]) as transport, Ledger(config["ledger"]) as ledger:
        report = deliver_batch(
            files, config["batch"], transport, ledger, QuotaLimits(), run_id=config["run_id"]
        )
    print(json.dumps(report.to_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
