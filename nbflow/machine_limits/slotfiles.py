"""Holder and waiter files of a limit: flocked while their owner lives, named so a listing gives the use.

A slot file is named ``<amount>_<indices>_<pid>_<unique>`` (``slot_name`` writes it, ``parse_slot_name`` reads
it) and holds a JSON record; an unlocked one is stale (its owner died) and is reaped by whoever sees it, as are
the unlocked dotfiles (spares, ``.tmp-`` files) of dead processes.
Entries that are not regular files are never opened (a FIFO would block): listing them is a ``LimitsDirError``.
"""

from __future__ import annotations

import errno
import json
import os
from json.encoder import encode_basestring

from ..devices import EPS, choose, weight
from .damage import check_regular, misplaced
from .forksafe import HOST, close_tracked, open_tracked, pid, unique

MAX_INDEXED = 1024  # limits up to this capacity hand out device indices (GPU slot k)
HOST_JSON = json.dumps(HOST)
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
PEEK = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # never blocks, even on a FIFO put there by hand


def fits(used: float, amount: float, capacity: float) -> bool:
    """``used + amount <= capacity`` up to a relative epsilon, so 0.1 + 0.2 style sums are not refused."""
    return used + amount <= capacity + EPS * max(capacity, 1.0)


class _Filelock:
    """filelock's descriptor functions, imported on first use (importing filelock takes ~50 ms)."""

    def __getattr__(self, name: str):
        import filelock

        value = getattr(filelock, name)
        setattr(self, name, value)
        return value


filelock = _Filelock()


def lock_nb(fd: int) -> bool:
    return filelock.lock_descriptor(fd, blocking=False)


def record(task: str, amount: float, since: float, slots: tuple[int, ...]) -> bytes:
    """The JSON a holder/waiter file holds (formatted by hand: this is on the hot path)."""
    return (
        f'{{"pid": {pid()}, "host": {HOST_JSON}, "task": {encode_basestring(task)}, "amount": {amount!r}, '
        f'"since": {since!r}, "slots": [{", ".join(map(str, slots))}]}}'
    ).encode()


def publish(directory: str, data: bytes) -> tuple[str, int]:
    """Create a uniquely named file in ``directory`` already flocked with ``data`` in it: written as a
    ``.tmp-`` dotfile, then renamed, so a visible file is always locked while its creator lives.

    A reaper may delete the dotfile between its creation and its lock (it looks like a dead waiter's):
    then the rename fails or the lock is taken, and another name is tried.
    """
    for _ in range(3):
        name = unique()
        tmp = f"{directory}/.tmp-{name}"
        fd = open_tracked(tmp, CREATE)
        try:
            if lock_nb(fd):  # else a reaper holds it and deletes it
                os.write(fd, data)
                os.rename(tmp, f"{directory}/{name}")
                return f"{directory}/{name}", fd
        except FileNotFoundError:  # reaped before the rename: try another name
            pass
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            finally:
                close_tracked(fd)
            raise
        close_tracked(fd)
    raise FileNotFoundError(errno.ENOENT, "removed three times while being created", directory)


def _open_live(path: str) -> int | None:
    """``path`` opened if its holder is alive (it holds the flock); None when it is gone, deleted here if its
    holder died. The caller closes the descriptor."""
    try:
        fd = os.open(path, PEEK)
    except FileNotFoundError:
        return None
    try:
        check_regular(fd, path)
        if not lock_nb(fd):
            return fd
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def reap(path: str) -> bool:
    """Delete ``path`` if nobody holds its flock (its holder died); True when it is gone."""
    fd = _open_live(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_live(path: str) -> dict | None:
    """The record of a live holder/waiter file, or None (and the file removed) when its owner is dead."""
    fd = _open_live(path)
    if fd is None:
        return None
    try:
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        fields = json.loads(data)
    except ValueError:
        fields = None
    return fields if isinstance(fields, dict) else {}


def entries(directory: str) -> list[str]:
    """Every name in ``directory``, dotfiles included; an entry that is not a regular file (a directory,
    FIFO, socket, link or device) is refused rather than ever opened."""
    names = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if not entry.is_file(follow_symlinks=False):  # d_type from the listing: no extra system call
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:  # released meanwhile (on file systems without d_type)
                    continue
                raise misplaced(entry.path, mode)
            names.append(entry.name)
    return names


def visible(directory: str, typed: bool = False) -> list[str]:
    """The holdings (or waiters) listed in ``directory``: dotfiles are spares or being written.

    Only names are needed to count the use (the hot path); ``typed`` also refuses special files, for
    readers that open the entries."""
    return [name for name in (entries(directory) if typed else os.listdir(directory)) if name[0] != "."]


def slot_name(amount: float, slots: tuple[int, ...]) -> str:
    """The name of a new slot file of this process: ``<amount>_<indices>_<pid>_<unique>``, so that a listing
    of ``slots/`` gives the use, the devices taken and the holders without opening a file."""
    return f"{amount!r}_{','.join(map(str, slots))}_{unique()}"


def parse_slot_name(name: str) -> tuple[float, tuple[int, ...], int]:
    """(amount, device indices, pid) of a slot file's name; what a name no nbflow process wrote lacks reads as
    0, () and 0, so such a file counts for nothing."""
    parts = name.split("_", 3)
    amount = amount_of(name)
    if len(parts) < 3:
        return amount, (), 0
    indices = tuple(int(i) for i in parts[1].split(",") if i.isdigit()) if parts[1] else ()
    return amount, indices, int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else 0


def amount_of(name: str) -> float:
    """The amount a slot file's name holds (its first field; 0 for a name no nbflow process wrote). The acquire
    loop sums these for every holder, so it reads no more of the name."""
    try:
        return float(name.partition("_")[0])
    except ValueError:
        return 0.0


def used_of(names: list[str]) -> float:
    """Sum of the amounts in visible slot file names."""
    return sum(map(amount_of, names), 0.0)


def pick_devices(names: list[str], amount: float, capacity: float) -> tuple[int, ...]:
    """The device indices in ``range(capacity)`` for a new holder of ``amount``, given the holders' file names
    (see ``nbflow.devices.choose``); none for limits larger than ``MAX_INDEXED`` (MEMORY bytes are not devices)."""
    if capacity > MAX_INDEXED:
        return ()
    load = [0.0] * int(capacity + EPS * max(capacity, 1.0))
    for entry in names:
        held, indices, _ = parse_slot_name(entry)
        if indices:
            share = weight(held, len(indices))
            for i in indices:
                if i < len(load):
                    load[i] += share
    return choose(load, amount)


def holder_pids(names: list[str]) -> set[int]:
    """The processes other than this one that hold the slot files ``names``."""
    pids = {parse_slot_name(entry)[2] for entry in names}
    pids.discard(0)
    pids.discard(pid())
    return pids
