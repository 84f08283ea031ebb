"""IPython magics: ``%nbflow ...`` and ``%%nbflow task`` (``%load_ext nbflow``).

Kept light: engine workers import ``nbflow.magics.task_cell_code`` to run task cells and need no IPython.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``nbflow`` line and cell magic on ``ipython``."""
    from .magic import NbflowMagics

    ipython.register_magics(NbflowMagics)
