"""The example notebooks are checked strictly by nbval: a changed stored output fails, the stored ones pass.

Runs ``pytest --nbval`` (not ``--nbval-lax``) with the examples' sanitize file in a subprocess, on two copies
of the quick-start notebook: one as committed and one with a single result changed.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "example_notebooks"
NOTEBOOK = "01_quick_start.ipynb"
RESULT = "peak GPU occupancy: 2\n"


def _change_result(path: pathlib.Path) -> int:
    """Replace the stored peak occupancy in ``path``; returns the index of the changed code cell."""
    nb = json.loads(path.read_text())
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    for index, cell in enumerate(code):
        for out in cell["outputs"]:
            text = "".join(out.get("text", ""))
            if RESULT in text:
                out["text"] = text.replace(RESULT, "peak GPU occupancy: 3\n")
                path.write_text(json.dumps(nb, indent=1))
                return index
    raise AssertionError(f"{NOTEBOOK} stores no output {RESULT!r}")


def test_nbval_fails_on_a_changed_output_and_passes_the_stored_ones(tmp_path):
    for copy in ("stored", "changed"):
        (tmp_path / copy).mkdir()
        shutil.copy(EXAMPLES / NOTEBOOK, tmp_path / copy / NOTEBOOK)
    changed = _change_result(tmp_path / "changed" / NOTEBOOK)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-sanitize-with",
            str(EXAMPLES / "sanitize.cfg"),
            "-p",
            "no:cacheprovider",
            "-v",
            "--rootdir",
            str(tmp_path),
            "stored",
            "changed",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = run.stdout + run.stderr
    # verbose lines: "stored/01_quick_start::ipynb::Cell 3 PASSED   [ 33%]" (nbval's node ids)
    results = re.findall(r"^(stored|changed)/\S+::Cell (\d+) (PASSED|FAILED|ERROR|SKIPPED)", run.stdout, re.MULTILINE)
    stored = [outcome for copy, _, outcome in results if copy == "stored"]
    failed = [(copy, int(cell)) for copy, cell, outcome in results if outcome != "PASSED"]
    assert run.returncode == 1, report
    assert len(stored) == len(results) // 2 > 0 and set(stored) == {"PASSED"}, report
    assert failed == [("changed", changed)], report
    assert "mismatch 'stdout'" in report and "ccupancy: 3" in report, report
