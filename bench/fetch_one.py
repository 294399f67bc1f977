"""One download with our engine, as a separate process like the other tools: fetch_one.py URL WORKSPACE.

Prints progress lines (`progress <bytes> <total>`) and, at the end, `done <seconds> <sha256>`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.messages import DownloadSpec
from services.common.settings import Settings
from services.worker import download


def main() -> int:
    url, workspace = sys.argv[1], Path(sys.argv[2])
    settings = Settings(workspace=workspace, downloads_allow_private_hosts=True, downloads_reserve_mb=0)

    def progress(p: download.Progress) -> None:
        print(f"progress {p.bytes_done} {p.total}", flush=True)

    begin = time.perf_counter()
    out = download.fetch(
        "bench0000bench00", DownloadSpec(url=url, folder="checkpoints"), download.Context(settings, progress)
    )
    print(f"done {time.perf_counter() - begin:.3f} {out.sha256} resumed_from={out.resumed_from}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
