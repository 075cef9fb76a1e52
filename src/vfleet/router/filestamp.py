"""When a file the router re-reads has changed: its stat stamp, and a loop that watches it.

The router re-reads several files while it runs (the endpoints file, the autoscale file, the
tenants file, its TLS certificate and key, the peers' trust bundle). Each is "changed" when
(mtime, size, inode) differs, after following links: a kubelet Secret update swaps the `..data`
link to a new directory, which changes the inode even when size and mtime happen to match, and a
writer that renames a whole new file in place changes it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

log = logging.getLogger("vfleet.router.filestamp")

Stamp = tuple[int, int, int]


def stamp(path: str) -> Stamp:
    """(mtime ns, size, inode) of `path`, links followed; raises OSError when it is not there."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch(
    path: str,
    what: str,
    read: Callable[[], None],
    gone: Callable[[], None],
    every_s: float,
    errors: tuple[type[Exception], ...] = (OSError, ValueError),
) -> None:
    """Call `read` now and whenever the file's stamp changes, and `gone` once when a file that
    was there disappears; checked every `every_s` seconds. A missing file at the start is not
    an error (its writer has not written it yet). An error from `read` is logged and the file
    is read again at its next change: most often a write caught half way, whose rest changes
    the stamp again."""
    seen: Stamp | None = None
    while True:
        try:
            now = stamp(path)
            if now != seen:
                seen = now
                read()
        except FileNotFoundError:
            if seen is not None:
                seen = None
                gone()
        except errors as exc:
            log.warning("%s %s: %s", what, path, exc)
        await asyncio.sleep(every_s)
