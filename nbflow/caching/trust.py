"""Who may read and write the cache: the key that signs every entry, and the checks on a local store directory.

Unpickling runs code, so an entry is unpickled only when its HMAC-SHA256 verifies with a key that only the
store's users hold: ``$NBFLOW_CACHE_SECRET`` (the secret itself) or ``$NBFLOW_CACHE_SECRET_FILE`` (a file
holding it) when a team shares a store, else a per-user key file, ``$XDG_CONFIG_HOME/nbflow/cache.key`` (or
``~/.config/nbflow/cache.key``), made with mode 0600 on first use. The key is read once per process and configuration.

A store is *shared* when a secret is configured: its files then follow the umask and the directory's group,
and only a directory that every user may write (without the sticky bit) is refused. Otherwise it is *private*:
made 0700/0600, and refused when someone else owns it or other users may write it (without the sticky bit).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import uuid

from ..errors import NbflowError

MIN_SECRET = 16  # characters (or bytes) of a configured secret


class UntrustedStore(NbflowError, OSError):
    """The store may not be used: other users could plant results in it, or no key is at hand to check them.
    (An ``OSError``: the task then runs uncached with a warning, as for a store that cannot be written.)"""


_fit: set[tuple[str, bool]] = set()  # store directories already found fit in this process, with ``shared``
_CONFIG = ("NBFLOW_CACHE_SECRET", "NBFLOW_CACHE_SECRET_FILE", "XDG_CONFIG_HOME", "HOME")  # where the key comes from


class Keyring:
    """The key of one configuration (``_CONFIG``'s values), read at its first use and then kept: after that, a
    store finds it with four environment lookups and reads no file."""

    def __init__(self, where: tuple[str | None, ...]) -> None:
        self.where = where
        self.shared = bool(where[0] or where[1])  # a team secret: the store follows the umask and group permissions
        self._hmac: hmac.HMAC | None = None

    def hmac(self) -> hmac.HMAC:
        """The keyed HMAC to copy for each entry; raises ``UntrustedStore`` when no usable key is at hand."""
        if self._hmac is None:
            self._hmac = hmac.new(_secret(*self.where), digestmod=hashlib.sha256)
        return self._hmac

    def sign(self, key: str, header: bytes, payload: bytes) -> bytes:
        """The hex HMAC of an entry: its key (so an entry moved or linked to another key's place does not
        verify), its header line and its pickled value."""
        mac = self.hmac().copy()
        mac.update(key.encode() + b"\n")
        mac.update(header)
        mac.update(payload)
        return mac.hexdigest().encode()


_keyrings: dict[tuple[str | None, ...], Keyring] = {}


def keyring() -> Keyring:
    """The keyring of the current environment (tests and notebooks may switch the variables)."""
    where = tuple(map(os.environ.get, _CONFIG))
    found = _keyrings.get(where)
    if found is None:
        found = _keyrings[where] = Keyring(where)
    return found


def _secret(text: str | None, path: str | None, config_home: str | None, home: str | None) -> bytes:
    if text:
        if len(text) < MIN_SECRET:
            raise UntrustedStore(f"NBFLOW_CACHE_SECRET is too short ({len(text)} characters): use {MIN_SECRET} or more")
        return text.encode()
    if path:
        return _read_key(path, private=False)
    base = config_home or os.path.join(home or os.path.expanduser("~"), ".config")
    path = os.path.join(base, "nbflow", "cache.key")
    if not os.path.lexists(path):
        _make_key(path)
    return _read_key(path, private=True)


def _read_key(path: str, private: bool) -> bytes:
    """The key in ``path``, refused when other users could read or change it (for a team's file, which may be a
    link, as mounted secrets are: all users)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if private else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UntrustedStore(f"the cache key {path} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedStore(f"the cache key {path} is not a regular file: remove it or set NBFLOW_CACHE_SECRET")
        if private and st.st_uid != os.geteuid():
            raise UntrustedStore(f"the cache key {path} is owned by uid {st.st_uid}: remove it (a new one is made)")
        others = 0o077 if private else 0o007
        if st.st_mode & others:
            who, fix = ("others", "chmod 600") if private else ("all users", "chmod o-rwx")
            raise UntrustedStore(f"the cache key {path} is readable or writable by {who}: run {fix} {path}")
        key = file.read().strip()
    if len(key) < MIN_SECRET:
        raise UntrustedStore(f"the cache key {path} is too short ({len(key)} bytes): use {MIN_SECRET} or more")
    return key


def _make_key(path: str) -> None:
    """Write a new random key to ``path`` unless another process got there first: the key is written in full to
    a private temporary file, then hard-linked into place, which (unlike a rename) never replaces a key that a
    racing process made and may already be using."""
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".cache.key-{uuid.uuid4().hex}")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_hex(32).encode() + b"\n")
            file.flush()
            os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # made meanwhile by another process: use that one
    except OSError as exc:
        raise UntrustedStore(f"the cache key {path} cannot be made ({exc.strerror or exc})") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def dir_mode(is_shared: bool) -> int:
    """The mode new store directories are made with: private, or the umask's for a team's store."""
    return 0o777 if is_shared else 0o700


def file_mode(is_shared: bool) -> int:
    """The mode new store files are made with: private, or the umask's for a team's store."""
    return 0o666 if is_shared else 0o600


def check_dir(path: str, is_shared: bool) -> None:
    """Create the store directory ``path`` if needed (0700 when private) and refuse one that other users could
    plant results in. A directory found fit is not checked again in this process."""
    if (path, is_shared) in _fit:
        return
    os.makedirs(path, mode=dir_mode(is_shared), exist_ok=True)
    st = os.stat(path)
    sticky = st.st_mode & stat.S_ISVTX
    writers = stat.S_IWOTH if is_shared else stat.S_IWGRP | stat.S_IWOTH
    if st.st_mode & writers and not sticky:
        who = "all users" if is_shared else "other users"
        raise UntrustedStore(
            f"{path} is writable by {who}, who could plant results: run chmod go-w {path} "
            "or set NBFLOW_CACHE_DIR to a directory of your own"
        )
    if not is_shared and st.st_uid != os.geteuid():
        raise UntrustedStore(
            f"{path} is owned by uid {st.st_uid}, not by you: set NBFLOW_CACHE_DIR to a directory of your own, "
            "or NBFLOW_CACHE_SECRET to share a store with a team"
        )
    _fit.add((path, is_shared))
