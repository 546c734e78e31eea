"""Write a file so that readers see the old or the new content, never a truncated one."""

import fnmatch
import os
import re
import tempfile
from typing import Iterable, List

__all__ = ["atomic_write", "remove_stale_temporaries"]

# Temporary files are ".tmp-<destination name>.<mkstemp's random part>" in the destination's
# folder: a process killed between mkstemp and the rename (SIGKILL, power loss) leaves one.
_TMP_PREFIX = ".tmp-"
_RANDOM_PART = re.compile(r"[A-Za-z0-9_]+")


def atomic_write(path: str, write, mode: int = 0o644) -> None:
    """Run ``write(file_object)`` on a temporary file next to ``path``, fsync it, then rename it
    over ``path``. A rename within one folder is atomic (POSIX and Windows), so a process killed
    at any moment, or two processes writing at once, never leave a partial file behind.

    Args:
        path: destination file; its folder must exist.
        write: callable receiving the binary file object.
        mode: permissions of the result (``mkstemp`` alone would leave 0600).
    """
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_TMP_PREFIX}{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(folder: str, names: Iterable[str]) -> List[str]:
    """Delete the temporary files that ``atomic_write`` calls killed mid-write left in
    ``folder``, for destinations whose name matches one of ``names`` (``fnmatch`` patterns,
    e.g. ``"*.pth"``). Other files, including other ``.tmp-*`` names, are left alone.

    Only call it when no ``atomic_write`` into these names is in flight: it would lose its
    temporary file. Returns the removed paths.
    """
    names = list(names)
    removed = []
    for entry in sorted(os.listdir(folder)):
        if not entry.startswith(_TMP_PREFIX):
            continue
        destination, dot, random_part = entry[len(_TMP_PREFIX):].rpartition(".")
        if not dot or not _RANDOM_PART.fullmatch(random_part) or not any(
                fnmatch.fnmatchcase(destination, n) for n in names):
            continue
        path = os.path.join(folder, entry)
        if os.path.isfile(path) and not os.path.islink(path):
            try:
                os.remove(path)
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(path)
    return removed
