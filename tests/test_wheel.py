"""The packaged project, not the checkout: build the sdist and, from it, the wheel; install the wheel into a fresh
venv and use it from a directory outside the checkout, where an editable install cannot hide a missing package.

The fresh venv has no pip and no copy of the dependencies: a ``.pth`` file appends the project venv's
site-packages after its own, so the installed wheel is imported first and the checkout not at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds for each step; generous for a loaded 2-core machine
ASSETS = ("monitor.js", "monitor.css")


def run(cmd: list[str], **kwargs) -> str:
    """Run ``cmd``; on failure the assertion shows its whole output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)[:200]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_modules() -> set[str]:
    """Every module of the checkout's package, as the wheel must ship it (``widgets/`` is ``nbflow.widgets``)."""
    names = {"nbflow.widgets"}
    for path in (REPO / "nbflow").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names - {"nbflow.__main__"}  # importing it runs the CLI


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """``(sdist, wheel, the fresh venv's python)``, built from the working tree."""
    root = tmp_path_factory.mktemp("packaged")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    for name in filter(None, listed.split("\0")):  # the working tree as git sees it: no .venv, build or egg-info
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)])  # the wheel from the sdist
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)]
    run(pip)  # before the .pth: pip must not see (and replace) the project venv's editable nbflow
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "zz-project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return sdist, wheel, python


def fresh_env(outside: Path) -> dict[str, str]:
    """The environment of a process using the wheel from ``outside`` the checkout, with a private cache there."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "NBFLOW_CACHE_DIR": str(outside / "cache"), "MPLBACKEND": "Agg"}


def test_the_wheel_and_the_sdist_ship_every_module_and_the_widget_assets(packaged):
    sdist, wheel, _ = packaged
    widgets = [path.name for path in (REPO / "widgets").iterdir() if path.suffix in (".py", ".js", ".css")]
    assert {"__init__.py", *ASSETS} <= set(widgets)
    expected = {str(path.relative_to(REPO)) for path in (REPO / "nbflow").rglob("*.py")} | {"nbflow/py.typed"}
    assert expected | {f"nbflow/widgets/{name}" for name in widgets} <= set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert expected | {f"widgets/{name}" for name in widgets} | {"LICENSE", "README.md"} <= in_sdist


SCRIPT = """
import importlib, importlib.resources, json, pkgutil, sys
import nbflow

imported = sorted(
    info.name for info in pkgutil.walk_packages(nbflow.__path__, "nbflow.") if not info.name.endswith("__main__")
)
for name in imported:
    importlib.import_module(name)
runs = []

@nbflow.task(cache=True)
def double(x):
    runs.append(x)
    return 2 * x

values = [double.submit(21).result(60), double.submit(21).result(60)]
assets = [importlib.resources.files("nbflow.widgets").joinpath(a).is_file() for a in ("monitor.js", "monitor.css")]
print(json.dumps({
    "file": nbflow.__file__, "path": sys.path, "imported": ["nbflow", *imported], "values": values, "runs": runs,
    "entries": [e.name for e in nbflow.cache_entries()], "assets": assets,
}))
"""


def test_the_installed_wheel_imports_every_module_and_caches_outside_the_checkout(packaged, tmp_path):
    _, _, python = packaged
    outside = tmp_path
    env = fresh_env(outside)
    got = json.loads(run([str(python), "-c", SCRIPT], cwd=outside, env=env).splitlines()[-1])
    assert Path(got["file"]).is_relative_to(python.parent.parent), got["file"]  # the wheel, not the checkout
    assert str(REPO) not in got["path"]
    assert set(got["imported"]) == source_modules()
    assert got["values"] == [42, 42] and got["runs"] == [21]  # the second call was a hit
    assert got["entries"] == ["double"] and got["assets"] == [True, True]
    listing = run([str(python.parent / "nbflow"), "cache", "ls"], cwd=outside, env=env)
    assert listing.splitlines()[1].split()[0] == "double", listing
    limits_env = {**env, "NBFLOW_LIMITS_DIR": str(outside / "limits")}  # the installed CLI sets a rate limit
    run([str(python.parent / "nbflow"), "limit", "api", "--rate", "10/s", "--burst", "2"], cwd=outside, env=limits_env)
    listing = run([str(python.parent / "nbflow"), "limits"], cwd=outside, env=limits_env)
    assert listing.splitlines()[1].split()[:4] == ["api", "-", "10/s", "2"], listing


def test_the_installed_magics_cache_a_task_cell_in_a_real_kernel(packaged, tmp_path):
    _, _, python = packaged
    outside = tmp_path
    env = fresh_env(outside)
    specs = outside / "kernels"
    (specs / "fresh").mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (specs / "fresh" / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "fresh", "language": "python"})
    )
    km = KernelManager(kernel_name="fresh", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    km.start_kernel(cwd=str(outside), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)

        def execute(code: str) -> str:
            shown: list[str] = []

            def hook(msg):
                if msg["msg_type"] == "stream":
                    shown.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    shown.append("\n".join(msg["content"]["traceback"]))

            reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=hook)
            assert reply["content"]["status"] == "ok", "".join(shown)
            return "".join(shown)

        execute("%load_ext nbflow")
        marks = outside / "cell-runs"
        cell = textwrap.dedent(f"""\
            %%nbflow task --cache --block
            open({str(marks)!r}, "a").write("x")
            answer = 6 * 7
            """)
        execute(cell)
        execute(cell)  # unchanged: a hit
        shown = execute("import nbflow; print(answer, nbflow.__file__, [e.name for e in nbflow.cache_entries()])")
        value, file, entries = shown.split(" ", 2)
        assert value == "42" and Path(file).is_relative_to(python.parent.parent), shown
        assert entries.strip() == "['answer']" and marks.read_text() == "x"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
