"""A real IPython kernel (ipykernel over ZMQ) driven like a front-end would, and notebooks run by nbclient."""

from __future__ import annotations

import dataclasses
import os
import queue
import time
from typing import Any

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient

TIMEOUT = 120  # seconds for anything a kernel does; generous for a loaded 2-core machine


@dataclasses.dataclass
class Execution:
    reply: dict[str, Any]  # execute_reply content
    messages: list[dict[str, Any]]  # iopub messages parented to this execution, in order

    def stream(self, name: str) -> str:
        return "".join(
            m["content"]["text"] for m in self.messages if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    def display_ids(self) -> list[str]:
        return [
            m["content"]["transient"]["display_id"]
            for m in self.messages
            if m["msg_type"] == "display_data" and (m["content"].get("transient") or {}).get("display_id")
        ]


class Kernel:
    """Starts a kernel with ``env``; ``run`` executes code and tracks every display by id, as a front-end does."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.displays: dict[str, dict[str, Any]] = {}  # display id -> latest data
        self.widgets: dict[str, dict[str, Any]] = {}  # comm id -> latest state, while open
        self.closed: set[str] = set()  # comm ids closed

    def send(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = TIMEOUT) -> Execution:
        """Messages of ``msg_id`` until the kernel is idle again, then its reply."""
        deadline = time.monotonic() + timeout
        messages = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self._track(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            messages.append(msg)
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return Execution(reply["content"], messages)

    def wait_for_stream(self, msg_id: str, text: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Read iopub until ``msg_id`` prints ``text``; returns the messages read (to hand to ``collect``)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self._track(msg)
            seen.append(msg)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "stream"
                and text in msg["content"]["text"]
            ):
                return seen

    def run(self, code: str, timeout: float = TIMEOUT) -> Execution:
        return self.collect(self.send(code), timeout)

    def drain(self) -> None:
        """Apply display updates that arrived while no cell ran."""
        try:
            while True:
                self._track(self.kc.get_iopub_msg(timeout=0.2))
        except queue.Empty:
            pass

    def wait_display(self, display_id: str, predicate: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Read iopub until the display ``display_id`` holds data for which ``predicate(data)`` is true."""
        deadline = time.monotonic() + timeout
        while not predicate(self.displays.get(display_id, {})):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"display {display_id} never matched; it holds {self.displays.get(display_id)}")
            try:
                self._track(self.kc.get_iopub_msg(timeout=min(left, 1)))
            except queue.Empty:
                pass
        return self.displays[display_id]

    def _track(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("display_data", "update_display_data"):
            display_id = (content.get("transient") or {}).get("display_id")
            if display_id:
                self.displays[display_id] = content["data"]
        elif kind == "comm_open" or (kind == "comm_msg" and content["data"].get("method") == "update"):
            self.widgets.setdefault(content["comm_id"], {}).update(content["data"].get("state", {}))
        elif kind == "comm_close":
            self.widgets.pop(content["comm_id"], None)
            self.closed.add(content["comm_id"])

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def run_notebook(cells: list[str | tuple[str, list[str]]], timeout: int = TIMEOUT) -> nbformat.NotebookNode:
    """Execute a notebook of code cells (``(source, tags)`` for tagged ones) in a fresh kernel with nbclient."""
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        source, tags = (cell, []) if isinstance(cell, str) else cell
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
    return nb


def cell_text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell shows as text: streams, text/plain of displays and results, and errors."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
    return "\n".join(parts)


def interrupt_while_blocked(kernel: Kernel, code: str, marker: str = "stopped waiting"):
    """Run ``code``, which prints 'blocking' and then blocks in nbflow; interrupt it; return its execution once
    the interrupt has reached the wait (its traceback holds ``marker``). A SIGINT can land between the print and
    the blocking call; then the cell is simply run again."""
    for _ in range(5):
        msg_id = kernel.send(code)
        kernel.wait_for_stream(msg_id, "blocking")
        kernel.interrupt()
        ex = kernel.collect(msg_id)
        assert ex.reply["ename"] == "KeyboardInterrupt"
        if marker in "\n".join(ex.reply["traceback"]):
            return ex
    raise AssertionError("the interrupt never reached the wait")
