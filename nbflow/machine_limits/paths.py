"""Where limits live, and whether that directory is safe to share through file locks.

The directory is ``$NBFLOW_LIMITS_DIR``, else ``$XDG_STATE_HOME/nbflow/limits``, else
``~/.local/state/nbflow/limits`` (created with mode 0700). The variable is read at each use so tests and
notebooks may switch it; each distinct path is checked once per process.
"""

from __future__ import annotations

import os
import stat

from ..errors import LimitsDirError

_checked: dict[str, str] = {}


def default_dir() -> str:
    """The per-user directory used when ``NBFLOW_LIMITS_DIR`` is not set."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "nbflow", "limits")


def limits_dir() -> str:
    """The checked limits directory for the current environment (an absolute path)."""
    raw = os.environ.get("NBFLOW_LIMITS_DIR") or default_dir()
    path = _checked.get(raw)
    if path is None:
        path = _checked[raw] = check_dir(raw)
    return path


def _fail(path: str, why: str) -> LimitsDirError:
    return LimitsDirError(f"limits directory {path} {why}; set NBFLOW_LIMITS_DIR to a directory you own")


def check_dir(raw: str) -> str:
    """Create ``raw`` (0700) if needed and refuse it when it is unwritable, unsafe or lacks ``flock``."""
    path = os.path.abspath(os.path.expanduser(raw))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise _fail(path, f"cannot be created or used ({exc.strerror or exc})") from None
    if st.st_uid != os.geteuid() and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _fail(path, f"is owned by uid {st.st_uid} and writable by others, who could forge or drop holdings")
    _probe_flock(path)
    return path


def _probe_flock(path: str) -> None:
    """Refuse filesystems without ``flock``: a soft lock would never be freed by a killed holder."""
    from filelock import FileLock, Timeout

    lock = FileLock(os.path.join(path, ".flock-probe"), fallback_to_soft=False, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return  # another process holds the probe right now: flock works
    except OSError as exc:
        raise _fail(path, f"is not writable or does not support flock ({exc.strerror or exc})") from None
    lock.release()
