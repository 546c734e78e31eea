"""Building a folder once while other processes wait, with a lock file next to it.

Many processes (the ranks of one or several machines sharing a filesystem, data-loader
workers) may need the same derived folder at the same time (the columnar cache of a json,
``dataseg.data.columnar``). :func:`build_folder_once` lets one of them build it while the
others wait:

* the lock is ``<folder>.lock``, created with ``O_EXCL`` so that one creator wins; it holds a
  token naming its host and process;
* the builder writes into ``<folder>.tmp-<host>-<pid>`` and renames it into place, so the
  folder is complete or absent;
* the builder touches the lock as it goes (:func:`heartbeat`); a lock untouched for
  :data:`STALE_LOCK_S` belongs to a builder that died, and one waiter takes it over
  (:func:`take_over_stale_lock`), removing that builder's temporary folder too.
"""

import logging
import os
import shutil
import socket
import time
from typing import Callable, Optional

__all__ = ["STALE_LOCK_S", "build_folder_once", "heartbeat", "take_over_stale_lock"]

logger = logging.getLogger(__name__)

# A lock untouched for this long belongs to a builder that died (a live one touches it every
# few seconds), so a waiting process takes over.
STALE_LOCK_S = 300.0


def _create_lock(lock: str, token: str) -> bool:
    """Create ``lock`` holding ``token`` unless it exists (O_EXCL: one creator wins)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return True


def _read_lock(lock: str) -> Optional[str]:
    try:
        with open(lock) as f:
            return f.read()
    except FileNotFoundError:
        return None


def heartbeat(lock: str, token: str):
    """The builder's keep-alive: touch ``lock``; re-create it if a waiter removed it as stale
    (a stalled builder, or clocks that differ across a shared filesystem), so that the others
    keep waiting instead of the live build failing. A lock another process holds by then is
    left to it (both build; the atomic rename of the folder keeps one result)."""
    try:
        os.utime(lock)
    except FileNotFoundError:
        if _create_lock(lock, token):
            logger.warning(f"The build lock {lock} vanished during the build (taken as stale "
                           "by a waiting process?); re-created it.")


def _newest_mtime(path: str) -> float:
    newest = os.path.getmtime(path)
    for entry in os.scandir(path):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _remove_stale_leftovers(folder: str):
    """Remove ``<folder>.tmp-*`` build folders of killed builders (as large as the folder).
    Only those untouched for the stale-lock time: a live builder writes into its folder and
    touches the lock as it goes."""
    parent, prefix = os.path.dirname(folder), os.path.basename(folder) + ".tmp-"
    for entry in os.scandir(parent):
        if not (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            idle = time.time() - _newest_mtime(entry.path)
        except FileNotFoundError:
            continue
        if idle > STALE_LOCK_S:
            logger.warning(f"Removing {entry.path}, left by a builder that died.")
            shutil.rmtree(entry.path, ignore_errors=True)


def take_over_stale_lock(lock: str, folder: str, token: str) -> bool:
    """Remove ``lock``, judged stale by the caller, atomically: it is first renamed to a name of
    this process's own, which only one of several waiters can do, and checked again there (a
    waiter that judged the same lock stale may already have replaced it with its own fresh
    lock, which is then put back). Returns whether this process removed a stale lock (it then
    also removed the stale build folders of ``folder``); the caller then creates the lock as
    usual."""
    moved = f"{lock}.stale-{token.split()[-1]}"
    try:
        os.rename(lock, moved)
    except FileNotFoundError:
        return False  # another waiter took it over first
    try:
        idle = time.time() - os.path.getmtime(moved)
    except FileNotFoundError:
        return False
    if idle <= STALE_LOCK_S:  # a live lock, created since the caller's look: put it back
        try:
            os.link(moved, lock)  # unless yet another process has created one meanwhile
        except OSError:
            pass  # its holder's heartbeat re-creates it
        os.remove(moved)
        return False
    os.remove(moved)
    logger.warning(f"Removed stale build lock {lock} (untouched for {idle:.0f}s: its builder "
                   "died).")
    _remove_stale_leftovers(folder)
    return True


def build_folder_once(folder: str, build: Callable[[str, Callable[[], None]], None],
                      is_complete: Callable[[str], bool], what: str, wait_timeout_s: float):
    """Make ``folder`` exist, complete, building it now unless another process does.

    Safe with many processes: one takes the lock ``<folder>.lock`` and calls
    ``build(tmp_folder, keep_alive)``, which must create ``tmp_folder`` and call
    ``keep_alive()`` as it goes, well within :data:`STALE_LOCK_S` between calls;
    ``tmp_folder`` is then renamed into ``folder``. The others wait until
    ``is_complete(folder)``. A lock untouched for :data:`STALE_LOCK_S` (its builder was
    killed) is taken over by one waiter.

    Args:
        what: names the folder in messages ("the columnar cache <folder> of <json>").
        wait_timeout_s: how long to wait for another builder before a ``TimeoutError``.
    """
    if is_complete(folder):
        return
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    lock = folder + ".lock"
    host, pid = socket.gethostname(), os.getpid()
    token = f"{host} {pid} {host}-{pid}-{os.urandom(4).hex()}\n"
    waited_since = time.monotonic()
    last_log = 0.0
    while not is_complete(folder):
        if not _create_lock(lock, token):
            waited = time.monotonic() - waited_since
            try:
                idle = time.time() - os.path.getmtime(lock)
            except FileNotFoundError:
                continue
            if idle > STALE_LOCK_S:
                take_over_stale_lock(lock, folder, token)
                continue
            if waited > wait_timeout_s:
                raise TimeoutError(
                    f"Waited {waited:.0f}s for another process to build {what}; if no process "
                    f"is building it, delete {lock}.")
            if waited - last_log >= 60:
                last_log = waited
                logger.info(f"Waiting for {what} (being built by the holder of {lock}).")
            time.sleep(0.5)
            continue
        try:
            if is_complete(folder):
                break
            tmp = f"{folder}.tmp-{host}-{pid}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build(tmp, lambda: heartbeat(lock, token))
                try:
                    os.rename(tmp, folder)
                except OSError:
                    if not is_complete(folder):
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # another builder won the race
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            if _read_lock(lock) == token:  # not a lock another process has taken over since
                try:
                    os.remove(lock)
                except FileNotFoundError:
                    pass
