"""Write a file so that readers see the old or the new content, never a truncated one."""

import os
import tempfile

__all__ = ["atomic_write"]


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.path.basename(path)}.")
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
