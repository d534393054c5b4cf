"""The build lock: one build of a batch at a time, on one machine or across many.

Without a database, an `fcntl` lock on `OUTBOX/.locks/<batch>.lock` (every process of the
machine, or of a volume whose locks work across machines). With one (`database.configured_url`),
a lease row `build:<batch>` there, renewed while held: a killed builder's lease expires
(`leases.lease_seconds()`), a killed builder's file lock is released by the kernel.

The lock is re-entrant within a process (the CLI holds it for a whole run and the writer
takes it again inside) and can be handed to the processes the holder starts
(`delegated_build_lock`: a launched run's step workers build under the CLI's lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from mm_assets.state import database
from mm_assets.state.leases import Lease

LOCKS = ".locks"
# Set by a holder of a batch's build lock for the processes it starts (a launched run's code
# server and step workers inherit it): they build under the holder's lock.
DELEGATED_BUILD_LOCK_ENV = "MM_ASSETS_DELEGATED_BUILD_LOCK"


class BuildInProgress(RuntimeError):
    """Another build of the same batch holds its lock."""


# Locks this process holds, by identity: how many holds, and how to release the lock.
_HELD: dict[str, tuple[int, Callable[[], None]]] = {}
_HELD_GUARD = threading.Lock()


def _lock_identity(outbox_root: Path, batch: str) -> str:
    """The lock's name: its database lease, or its lock file's resolved path."""
    if database.configured_url():
        return f"lease:build:{batch}"
    locks = outbox_root / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    return str((locks / f"{batch}.lock").resolve())


def _busy(batch: str, where: str) -> BuildInProgress:
    return BuildInProgress(
        f"another build of batch {batch} is running ({where}); "
        f"wait for it to finish, then build again if needed"
    )


def _acquire(identity: str, batch: str) -> Callable[[], None]:
    """Take the lock at once or raise BuildInProgress; returns its release."""
    url = database.configured_url()
    if url:
        lease = Lease(url, f"build:{batch}")
        if not lease.try_acquire():
            raise _busy(batch, f"lease held by {lease.holder() or 'another worker'}")
        lease.start_renewing()
        return lease.release
    fd = os.open(identity, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(batch, f"lock {identity}") from None
    return lambda: os.close(fd)


@contextlib.contextmanager
def delegated_build_lock(outbox_root: Path, batch: str) -> Iterator[None]:
    """Hand the batch's build lock, held by this process, to the processes it starts."""
    previous = os.environ.get(DELEGATED_BUILD_LOCK_ENV)
    os.environ[DELEGATED_BUILD_LOCK_ENV] = _lock_identity(outbox_root, batch)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DELEGATED_BUILD_LOCK_ENV, None)
        else:
            os.environ[DELEGATED_BUILD_LOCK_ENV] = previous


@contextlib.contextmanager
def batch_build_lock(outbox_root: Path, batch: str) -> Iterator[None]:
    """Exclusive right to build `batch`, shared by every process (and, with a database,
    every machine).

    Raises BuildInProgress at once when another process builds the batch: a second build
    started alongside would read and replace the first one's half-written work.
    """
    identity = _lock_identity(outbox_root, batch)
    if os.environ.get(DELEGATED_BUILD_LOCK_ENV) == identity:
        # An ancestor process (`mm-assets build`) holds the lock for this run's steps.
        yield
        return
    with _HELD_GUARD:
        if identity in _HELD:
            holds, release = _HELD[identity]
            _HELD[identity] = (holds + 1, release)
        else:
            _HELD[identity] = (1, _acquire(identity, batch))
    try:
        yield
    finally:
        with _HELD_GUARD:
            holds, release = _HELD[identity]
            if holds > 1:
                _HELD[identity] = (holds - 1, release)
            else:
                del _HELD[identity]
                release()
