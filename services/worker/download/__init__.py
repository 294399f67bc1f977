"""The download engine: plain functions, no Celery. Resumable, verified, atomic, parallel, cancellable.

The volume is the record of what is in flight: `<name>.part` (the bytes) and `<name>.part.json` (the
manifest: where it comes from, its validator, how far each segment got) sit beside the destination,
and `<name>.lock` says who writes them. A file appears under its final name only once its size and
sha256 are checked, fsynced, and renamed in one step.

- `lock`: the lock file; `manifest`: the manifest and the progress journal;
- `transfer`: one stream or many ranged segments, with the hash follower;
- `fetch`: the attempt that ties them, and the retry loop.
"""

from services.worker.download.context import Cancelled, Context, Outcome, Progress
from services.worker.download.fetch import fetch, holder_of, target_path, writer_died
from services.worker.download.lock import Busy
from services.worker.download.manifest import Manifest, Segment

__all__ = [
    "Busy",
    "Cancelled",
    "Context",
    "Manifest",
    "Outcome",
    "Progress",
    "Segment",
    "fetch",
    "holder_of",
    "target_path",
    "writer_died",
]
