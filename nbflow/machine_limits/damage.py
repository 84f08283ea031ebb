"""Damaged limit directories: special files, parts of the wrong type, foreign or deleted sub-directories.

A FIFO opened for reading blocks until a writer comes, so nbflow never opens an entry of a limit directory
before knowing its type: listings give it for free (``d_type``), other opens use ``O_NONBLOCK`` and
``fstat``. Every damage found is a ``LimitsDirError`` that names the path and the fix.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import LimitsDirError

OWN_FIX = "set NBFLOW_LIMITS_DIR to a directory you own"


def kind(mode: int) -> str:
    """``a directory``, ``a FIFO``... for the messages."""
    for test, what in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "a device file"


def misplaced(path: str, mode: int, expected: str = "a regular file") -> LimitsDirError:
    """An entry of the wrong type where nbflow keeps its own files: never opened, to be removed."""
    return LimitsDirError(f"limits state {path} is {kind(mode)}, where nbflow keeps {expected}: remove it")


def check_regular(fd: int, path: str) -> None:
    """Refuse a descriptor (opened with ``O_NONBLOCK``) that is not a regular file."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise misplaced(path, mode)


def deleted(name: str, path: str) -> LimitsDirError:
    """``slots/`` vanished: the holders it counted are still running, so granting now could over-admit."""
    return LimitsDirError(
        f"limit {name!r} is damaged: {path} was deleted while the limit was set up, so its holders can no longer "
        f"be counted; once no process holds {name!r}, recreate it with `mkdir -m 700 {path}`"
    )


def check_tree(name: str, directory: str) -> None:
    """Refuse a limit directory whose parts have the wrong type, are another user's and writable by others,
    or whose ``slots/`` was deleted. Missing parts are fine (created later)."""
    uid = os.geteuid()
    wake = _lstat(os.path.join(directory, "wake"))  # created last: if it exists, slots/ was created before
    for part, want in (("", stat.S_ISDIR), ("slots", stat.S_ISDIR), ("waiting", stat.S_ISDIR), ("gate", stat.S_ISREG)):
        path = os.path.join(directory, part) if part else directory
        st = _lstat(path)
        if st is None:
            if part == "slots" and wake is not None:
                raise deleted(name, path)
            continue
        if not want(st.st_mode):
            raise misplaced(path, st.st_mode, "a directory" if want is stat.S_ISDIR else "a regular file")
        if want is stat.S_ISDIR and st.st_uid != uid and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LimitsDirError(
                f"limits directory {path} is owned by uid {st.st_uid} and writable by others, who could forge or "
                f"drop holdings; {OWN_FIX}"
            )


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def failure(name: str, exc: OSError) -> LimitsDirError:
    """A system error met in the directory of limit ``name``, as one line naming the path and the fix."""
    path = exc.filename2 if exc.errno in (errno.EEXIST, errno.EISDIR) and exc.filename2 else exc.filename
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = os.path.dirname(path) if path else "the limits directory"
        fix = f"make {where} writable again (`chattr -i`, `chmod u+w`) or {OWN_FIX}"
    elif exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        fix = "remove what is in the way"
    elif exc.errno == errno.ENOENT:
        fix = f"it was removed while in use; once no process holds {name!r}, restore it or remove the limit's directory"
    else:
        fix = f"repair the limits directory or {OWN_FIX}"
    return LimitsDirError(f"limit {name!r}: cannot use {path or 'its state'}: {what}; {fix}")
