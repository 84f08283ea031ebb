"""Matplotlib figures a task cell makes: shown as PNG under that cell, then closed, so no later cell shows them.

Which figures are a task cell's own: see ``per_thread_figures``.

Nothing here imports matplotlib: a cell that never imported ``matplotlib.pyplot`` costs a dict lookup. Nor does
anything here fail a cell: pyplot found half-imported (by another cell's thread) is taken as not loaded yet.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from typing import Any

_REPLACED = ("module://matplotlib_inline", "agg")  # backends that show nothing on a worker
BACKEND = "module://nbflow.magics.mplbackend"


def loaded(name: str) -> Any:
    """``sys.modules[name]`` once it is fully imported, else None: a module another thread is still importing
    is already there without its attributes (``__spec__._initializing``, as ``importlib`` checks it)."""
    module = sys.modules.get(name)
    return None if getattr(getattr(module, "__spec__", None), "_initializing", False) else module


def is_figure(value: Any) -> bool:
    return type(value).__module__ == "matplotlib.figure" and hasattr(value, "savefig")


def bundle(fig: Any) -> dict[str, Any]:
    """A figure as an ordinary cell shows it: PNG, with its repr as the text."""
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    return {"image/png": base64.b64encode(png.getvalue()).decode("ascii"), "text/plain": repr(fig)}


def headless() -> None:
    """Where no kernel shows figures (a child process, a Dask worker), draw them with Agg and have
    ``plt.show()`` show them under the task cell: the notebook's inline backend, inherited through the
    environment, would print ``<Figure ...>`` and drop them, and a GUI backend would open windows."""
    if os.environ.get("MPLBACKEND", "agg").lower().startswith(_REPLACED):
        os.environ["MPLBACKEND"] = BACKEND
    pyplot = loaded("matplotlib.pyplot")
    if pyplot is not None and pyplot.get_backend().lower().startswith(_REPLACED):
        pyplot.switch_backend(BACKEND)


def open_now() -> set[int]:
    """The numbers of the figures pyplot has open."""
    pyplot = loaded("matplotlib.pyplot")
    return set(pyplot.get_fignums()) if pyplot is not None else set()


def close_new(before: set[int], shown: Any = None) -> list[dict[str, Any]]:
    """Close the figures opened since ``before``; returns them as PNG bundles, in the order they were made,
    but for ``shown`` (the cell's last value, shown as such)."""
    pyplot = loaded("matplotlib.pyplot")
    if pyplot is None:
        return []
    bundles = []
    for number in sorted(set(pyplot.get_fignums()) - before):
        fig = pyplot.figure(number)
        if fig is not shown:
            bundles.append(bundle(fig))
        pyplot.close(fig)
    return bundles
