"""The matplotlib backend of task cells where no kernel shows figures (a child process, a Dask worker).

Agg draws; ``plt.show()`` hands each open figure to the running task cell, which shows it under the cell
as PNG, and closes it, as the notebook's inline backend does in the kernel.
"""

from __future__ import annotations

from typing import Any

from matplotlib import pyplot
from matplotlib._pylab_helpers import Gcf
from matplotlib.backends.backend_agg import FigureCanvasAgg

from .task_display import display

FigureCanvas = FigureCanvasAgg


def show(*args: Any, **kwargs: Any) -> None:
    for manager in Gcf.get_all_fig_managers():
        display(manager.canvas.figure)
        pyplot.close(manager.canvas.figure)
