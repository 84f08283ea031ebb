"""The cache's store: signed entries, who may use the store directory, its permissions, the size cap, foreign
files where entries belong, and entries dated in the future."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import stat
import subprocess
import sys
import time
import types
import uuid

import fsspec
import pytest
from test_cache import plus_one

import nbflow
from nbflow import caching

store = importlib.import_module("nbflow.caching.store")  # the module (``caching.store`` is a function)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A private store and a private per-user key (both inherited by the processes a test starts)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("NBFLOW_CACHE_SECRET", "NBFLOW_CACHE_SECRET_FILE", "NBFLOW_CACHE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def memory_store(monkeypatch):
    """A store at an fsspec URL that is not a local path (fsspec's in-memory file system)."""
    url = f"memory://nbflow-{uuid.uuid4().hex}"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", url)
    yield url
    fsspec.filesystem("memory").rm(url, recursive=True)


class Plant:
    """What someone else writes into a store: unpickling it creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted(marker) -> bytes:
    """An entry as an earlier nbflow wrote it (a header line, then the pickle), holding a ``Plant``."""
    header = json.dumps({"name": "f", "created": time.time(), "duration": 0.0}).encode() + b"\n"
    return header + pickle.dumps(Plant(str(marker)))


def entry_paths() -> list[str]:
    return [path for path, _, _ in caching.store().files.listing()]


def test_a_planted_entry_is_never_unpickled_it_is_recomputed_and_replaced_with_one_warning(tmp_path, cache_dir):
    f, calls = plus_one()
    assert f(1) == 2
    [entry] = cache_dir.glob("*/*.entry")
    genuine = entry.read_bytes()
    marker = tmp_path / "pwned"
    entry.write_bytes(planted(marker))
    with pytest.warns(UserWarning, match=r"nbflow: the cached result .*\.entry failed its integrity check"):
        assert f(1) == 2
    assert not marker.exists() and len(calls) == 2
    assert f(1) == 2 and len(calls) == 2  # replaced by a good entry: a hit

    # A valid tag and header with another pickle behind them: the signature covers the value too.
    tag, header, _ = genuine.split(b"\n", 2)
    entry.write_bytes(tag + b"\n" + header + b"\n" + pickle.dumps(Plant(str(marker))))
    assert f(1) == 2 and not marker.exists() and len(calls) == 3


def test_a_planted_entry_in_a_store_at_an_fsspec_url_is_never_unpickled(tmp_path, memory_store):
    f, calls = plus_one()
    assert f(1) == 2
    [path] = entry_paths()
    marker = tmp_path / "pwned"
    fsspec.filesystem("memory").pipe_file(path, planted(marker))
    with pytest.warns(UserWarning, match="failed its integrity check"):
        assert f(1) == 2
    assert not marker.exists() and len(calls) == 2
    assert f(1) == 2 and len(calls) == 2


def test_an_entry_written_with_another_secret_is_a_miss(monkeypatch):
    f, calls = plus_one()
    monkeypatch.setenv("NBFLOW_CACHE_SECRET", "team-one-" + "x" * 16)
    assert f(1) == 2 and f(1) == 2 and len(calls) == 1
    monkeypatch.setenv("NBFLOW_CACHE_SECRET", "team-two-" + "x" * 16)
    with pytest.warns(UserWarning, match="failed its integrity check.*NBFLOW_CACHE_SECRET"):
        assert f(1) == 2
    assert len(calls) == 2
    monkeypatch.setenv("NBFLOW_CACHE_SECRET", "short")
    with pytest.warns(UserWarning, match="results are not cached.*NBFLOW_CACHE_SECRET is too short"):
        assert f(1) == 2
    assert len(calls) == 3


def test_a_secret_file_shared_by_a_team_signs_like_the_variable(tmp_path, monkeypatch):
    f, calls = plus_one()
    secret = tmp_path / "team.key"
    secret.write_text("a-team-secret-of-some-length\n")
    secret.chmod(0o640)
    monkeypatch.setenv("NBFLOW_CACHE_SECRET_FILE", str(secret))
    assert f(1) == 2
    monkeypatch.delenv("NBFLOW_CACHE_SECRET_FILE")
    monkeypatch.setenv("NBFLOW_CACHE_SECRET", "a-team-secret-of-some-length")
    assert f(1) == 2 and len(calls) == 1  # the same secret: a hit
    monkeypatch.delenv("NBFLOW_CACHE_SECRET")
    readable = tmp_path / "everyone.key"
    readable.write_text("a-team-secret-of-some-length\n")
    readable.chmod(0o644)
    monkeypatch.setenv("NBFLOW_CACHE_SECRET_FILE", str(readable))
    with pytest.warns(UserWarning, match=r"results are not cached.*everyone\.key is readable or writable by all users"):
        assert f(1) == 2
    assert len(calls) == 2


KEY_MAKER = """
import sys, time
from pathlib import Path
from nbflow.caching import trust

go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
print(trust.keyring().sign("k", b"header\\n", b"value").decode())
"""


def test_the_default_key_is_made_once_private_and_shared_by_racing_processes(tmp_path):
    script, go = tmp_path / "keymaker.py", tmp_path / "go"
    script.write_text(KEY_MAKER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(go)], stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    go.touch()
    tags = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert len(tags) == 1 and len(tags.pop()) == 64  # every process signs with the one key that was made
    key = tmp_path / "config" / "nbflow" / "cache.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert [p.name for p in key.parent.iterdir()] == ["cache.key"]  # no temporary file left


def test_a_default_key_others_can_read_runs_the_task_uncached_and_says_how_to_fix_it(tmp_path):
    key = tmp_path / "config" / "nbflow" / "cache.key"
    key.parent.mkdir(parents=True)
    key.write_text("0" * 64)
    key.chmod(0o644)
    f, calls = plus_one()
    with pytest.warns(UserWarning, match=r"results are not cached.*cache\.key is readable or writable by others.*"):
        assert f(1) == 2
    assert len(calls) == 1 and entry_paths() == []


@pytest.mark.parametrize(
    "unsafe, why",
    [
        (lambda path: path.chmod(0o777), "writable by other users"),
        (lambda path: os.chown(path, 65534, 65534), "owned by uid 65534"),
    ],
    ids=["other-writable", "foreign-owned"],
)
@pytest.mark.parametrize("url", [False, True], ids=["path", "file-url"])
def test_a_store_directory_that_others_can_write_or_own_is_not_read(unsafe, why, url, cache_dir, monkeypatch):
    cache_dir.mkdir(mode=0o700)
    unsafe(cache_dir)
    if url:
        monkeypatch.setenv("NBFLOW_CACHE_DIR", f"file://{cache_dir}")
    f, calls = plus_one()
    for expected in (1, 2):
        with pytest.warns(UserWarning, match=f"results are not cached: the store .*cache.*{why}"):
            assert f(1) == 2
        assert len(calls) == expected  # run uncached every time
    assert not list(cache_dir.glob("*/*.entry"))


def test_a_sticky_store_directory_others_can_write_is_used(cache_dir):
    cache_dir.mkdir()
    cache_dir.chmod(0o1777)
    f, calls = plus_one()
    assert f(1) == 2 and f(1) == 2 and len(calls) == 1


def modes(root) -> set[tuple[str, int]]:
    """(kind, permission bits) of everything under ``root``, and of ``root``."""
    found = {("dir", stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", stat.S_IMODE(path.stat().st_mode)))
    return found


def test_a_private_store_is_0700_0600_and_a_shared_one_follows_the_umask(cache_dir, tmp_path, monkeypatch):
    f, _ = plus_one()
    assert f(1) == 2
    assert modes(cache_dir) == {("dir", 0o700), ("file", 0o600)}

    shared = tmp_path / "shared"
    monkeypatch.setenv("NBFLOW_CACHE_DIR", str(shared))
    monkeypatch.setenv("NBFLOW_CACHE_SECRET", "a-team-secret-of-some-length")
    g, _ = plus_one()  # a task's store is the one of its first call
    old = os.umask(0o002)
    try:
        assert g(1) == 2
    finally:
        os.umask(old)
    assert modes(shared) == {("dir", 0o775), ("file", 0o664)}


@pytest.mark.parametrize("where", ["path", "fsspec"])
def test_the_size_cap_holds_after_every_write(where, request, monkeypatch):
    if where == "fsspec":
        request.getfixturevalue("memory_store")
    monkeypatch.setenv("NBFLOW_CACHE_SIZE", "100KB")

    @nbflow.task(cache=True)
    def blob(i):
        return b"x" * 20_000

    biggest = 0
    for i in range(40):
        blob(i)
        sizes = [entry.size for entry in caching.entries()]
        biggest = max(biggest, *sizes)
        assert sum(sizes) <= 100_000 + biggest, f"{sum(sizes)} bytes stored after write {i + 1}"
    assert blob.submit(39).cached is not None  # the last one written is kept


def keys(paths) -> set[str]:
    return {os.path.basename(path)[: -len(store.SUFFIX)] for path in paths}


def test_a_directory_or_symlink_where_an_entry_belongs_is_left_alone_and_never_followed(cache_dir, monkeypatch):
    f, calls = plus_one()
    assert f(1) == 2
    [one] = entry_paths()
    assert f(2) == 3
    [two] = set(entry_paths()) - {one}
    os.unlink(one)
    os.symlink(two, one)  # the entry of f(1) now points at the entry of f(2)
    assert f(1) == 2 and len(calls) == 3  # not followed: recomputed, and the link replaced
    assert not os.path.islink(one)

    shard = cache_dir / "ab"
    shard.mkdir()
    folder, link = shard / ("ab" + "0" * 62 + ".entry"), shard / ("ab" + "1" * 62 + ".entry")
    folder.mkdir()
    (folder / "inside").write_bytes(b"y" * 50_000)
    link.symlink_to(two)
    with pytest.warns(UserWarning, match=r"ab0+\.entry is a directory where a cached result belongs"):
        assert {entry.key for entry in caching.entries()} == keys([one, two])

    monkeypatch.setenv("NBFLOW_CACHE_SIZE", "1B")
    with pytest.warns(UserWarning, match=r"ab1+\.entry is a symbolic link"):
        caching.store().evict(store.size_cap())
    assert caching.entries() == [] and folder.is_dir() and link.is_symlink()  # evicted around them
    monkeypatch.delenv("NBFLOW_CACHE_SIZE")

    assert f(3) == 4
    cleared = subprocess.run([sys.executable, "-m", "nbflow", "cache", "clear"], capture_output=True, text=True)
    assert cleared.returncode == 0 and cleared.stdout.strip() == "deleted 1 cached result(s)", cleared.stderr
    assert "ab0000" in cleared.stderr and "directory" in cleared.stderr  # named on stderr
    assert caching.clear() == 0 and folder.is_dir() and link.is_symlink()


def test_a_directory_where_an_entry_belongs_in_an_fsspec_store_is_left_alone(memory_store):
    f, calls = plus_one()
    assert f(1) == 2
    folder = f"{caching.store().files.root}/ab/{'ab' + '0' * 62}.entry"
    fsspec.filesystem("memory").pipe_file(f"{folder}/inside", b"y")
    with pytest.warns(UserWarning, match=r"ab0+\.entry is a directory"):
        assert caching.clear() == 1
    assert caching.entries() == [] and f(1) == 2 and len(calls) == 2


def test_an_entry_dated_in_the_future_expires(monkeypatch):
    f, calls = plus_one()
    hourly = f.with_options(cache_expiration=3600)
    tomorrow = types.SimpleNamespace(time=lambda: time.time() + 86400)
    with monkeypatch.context() as patch:
        patch.setattr(store, "time", tomorrow)  # the clock is a day ahead when the entry is written...
        assert hourly(1) == 2
    # ...then set back
    assert hourly(1) == 2 and len(calls) == 2  # dated tomorrow: expired, recomputed and replaced
    assert hourly(1) == 2 and len(calls) == 2
    assert f(1) == 2 and len(calls) == 2  # without an expiration, any date is fine


@pytest.mark.parametrize("cap", ["0", "-1", "abc", "inf", "5 minutes"])
def test_a_malformed_size_cap_runs_the_task_uncached_with_a_warning_and_stores_nothing(monkeypatch, cap):
    monkeypatch.setenv("NBFLOW_CACHE_SIZE", cap)
    task = nbflow.task(lambda x: x + 1, cache=True, name="capped")
    with pytest.warns(UserWarning, match=rf"cannot be used \(NBFLOW_CACHE_SIZE='{cap}' is not a size .*'10GB'"):
        assert task(1) == 2
    assert caching.entries() == []  # decided before the run: nothing stored, then a failure
