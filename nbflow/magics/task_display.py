"""How what a task cell shows becomes mimebundles: its last value, ``display()`` where no IPython shell runs,
and the text form of its widgets.

This module is imported where task cells run: it must not need IPython (it uses it when it is there).
"""

from __future__ import annotations

import html
import re
import sys
from typing import Any

from . import figures
from .capture import clear, current_displays, printable_data, running_shell

WIDGET = "application/vnd.jupyter.widget-view+json"
_BAR = 10  # characters of a progress bar's text form (tqdm's width when it does not know the terminal's)


def mimebundle(value: Any) -> dict[str, Any]:
    """How to show ``value``, computed where it is (it may not travel): with the kernel's own formatters in
    the kernel, else IPython's defaults, else its repr; a matplotlib figure as PNG. Its text is ``printable``."""
    shell = running_shell()
    if shell is not None:
        data, _ = shell.display_formatter.format(value)
    else:
        try:
            from IPython.core.formatters import DisplayFormatter
        except ImportError:  # a worker without IPython
            data = {"text/plain": repr(value)}
        else:
            data, _ = DisplayFormatter().format(value)
    if "image/png" not in data and figures.is_figure(value):
        data = figures.bundle(value)
    return printable_data(data)


def display(*objs: Any, raw: bool = False, display_id: Any = None, update: bool = False, **_: Any) -> Any:
    """``IPython.display.display`` where no IPython shell runs (a child process, a Dask worker): a task cell
    collects the bundles, to be shown under it; outside a task cell it prints, as IPython's does there."""
    displays = current_displays()
    if displays is None:
        print(*objs)
        return None
    if display_id is True:
        import uuid

        display_id = uuid.uuid4().hex
    for obj in objs:
        displays.add(dict(obj) if raw else mimebundle(obj), display_id, update)
    if display_id and not update:
        from IPython.display import DisplayHandle

        return DisplayHandle(display_id)
    return None


def clear_output(wait: bool = False) -> None:
    """``IPython.display.clear_output`` where no IPython shell runs: a task cell's output starts over."""
    if not clear():
        print("\033[2K\r", end="", flush=True)


def use_for_ipython() -> None:
    """Make ``IPython.display``'s ``display`` and ``clear_output`` reach task cells where no IPython shell runs;
    names are looked up at the cell's ``import``, so it finds these."""
    try:
        import IPython.display  # noqa: F401  (once per process: the cell imports it after this)
    except ImportError:  # a worker without IPython: nothing to reach
        return
    for name in ("IPython.display", "IPython.core.display", "IPython.core.display_functions"):
        module = sys.modules[name]
        module.display, module.clear_output = display, clear_output


def widget_text(data: dict[str, Any]) -> str | None:
    """The text form of a widget a cell displayed, as it is now (a progress bar as tqdm draws it in a
    terminal); None if the widget was closed. The bundle's own text if the widget is not in this process."""
    model = sys.modules.get("ipywidgets.widgets.widget")
    instances = getattr(model, "_instances", None)
    if instances is None:
        return data.get("text/plain", "")
    widget = instances.get(data[WIDGET].get("model_id"))
    return None if widget is None else _text(widget)


def _text(widget: Any) -> str:
    children = getattr(widget, "children", None)
    if children is not None:  # a box: its parts side by side
        return "".join(_text(child) for child in children)
    if hasattr(widget, "bar_style") and hasattr(widget, "max"):  # a progress bar
        span = (widget.max - widget.min) or 1
        filled = round(_BAR * min(max((widget.value - widget.min) / span, 0), 1))
        bar = "|" + "█" * filled + " " * (_BAR - filled) + "|"
        return f"{widget.description} {bar}" if widget.description else bar
    value = getattr(widget, "value", None)
    if isinstance(value, str):  # HTML, Label, Text: what it reads
        return html.unescape(re.sub(r"<[^>]*>", "", value)).replace("\u2007", " ")  # (tqdm pads with U+2007)
    return repr(widget)
