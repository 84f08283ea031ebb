"""``%nbflow debug``, ``nbflow.debug`` and ``%nbflow replay`` in a real kernel, pdb answered through the kernel's
stdin channel as a front-end does, on threads, child processes and a Dask LocalCluster: the failed frame's locals
(placeholders for what cannot travel), ``where``/``up`` through the notebook's cells, replays that fail the same way
or now succeed, and other task cells finishing while pdb waits for input."""

from __future__ import annotations

import queue
import re
import time
from typing import Any

import pytest
from magics_nb.kernel import TIMEOUT, Execution, Kernel

ENGINES = {
    "threads": "%nbflow use local --workers 4",
    "processes": "%nbflow use local --workers 4 --processes",
    "dask": "%nbflow use dask --n-workers 1 --threads-per-worker 2",
}

# An earlier notebook cell: the task code fails inside this helper, with locals that can and cannot be pickled.
HELPER = """import os, threading, nbflow
def helper(x):
    y = 21 * 2
    f = open(os.devnull)
    lock = threading.Lock()
    raise ValueError(f"helper got {x}")

@nbflow.task
def job(x):
    return helper(x)

allowed = False

@nbflow.task
def guarded(n):
    if not allowed:
        raise RuntimeError(f"not allowed yet: {n}")
    return n * 2"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ok(kernel: Kernel, code: str) -> Execution:
    ex = kernel.run(code)
    assert ex.reply["status"] == "ok", (code, ex.reply.get("traceback"), ex.stream("stderr"))
    return ex


class Session:
    """A cell that reads stdin (pdb), answered prompt by prompt with ``kc.input``. Each answer's output is read up
    to a marker printed by a ``p`` command sent after it, so an answer is complete whatever order the kernel's
    stdin and iopub messages arrive in."""

    def __init__(self, kernel: Kernel, code: str) -> None:
        self.kernel = kernel
        self.msg_id = kernel.kc.execute(code, allow_stdin=True)
        self.out = ""  # what the cell printed to stdout so far, ANSI colours removed
        self.err = ""
        self.idle = False
        self._read = 0  # how much of ``out`` the answers so far took
        self._marks = 0
        self._await_prompt()
        self.intro = self._answer()  # the header and the frame pdb stopped at

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        """After a failed assertion, leave pdb so that the kernel can run the next test's cells."""
        if kind is not None and not self.idle:
            try:
                self.quit()
            except (AssertionError, queue.Empty):
                pass

    def ask(self, command: str) -> str:
        """Answer the prompt with ``command``; what pdb printed in reply."""
        self.kernel.kc.input(command)
        self._await_prompt()
        return self._answer()

    def quit(self) -> dict[str, Any]:
        """``q``; the cell's execute_reply once the kernel is idle again."""
        self.kernel.kc.input("q")
        deadline = time.monotonic() + TIMEOUT
        while not self.idle:
            assert time.monotonic() < deadline, f"the cell did not end after q: {self.out}{self.err}"
            self._pump(0.5)
        while True:
            reply = self.kernel.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == self.msg_id:
                return reply["content"]

    def wait_display(self, display_id: str, predicate: Any) -> dict[str, Any]:
        """Read iopub (keeping this cell's output) until the display ``display_id`` satisfies ``predicate``."""
        deadline = time.monotonic() + TIMEOUT
        while not predicate(self.kernel.displays.get(display_id, {})):
            assert time.monotonic() < deadline, f"display {display_id}: {self.kernel.displays.get(display_id)}"
            self._pump(0.5)
        return self.kernel.displays[display_id]

    def _answer(self) -> str:
        mark = f"-- end of answer {self._marks} --"
        self._marks += 1
        self.kernel.kc.input(f"p {mark!r}")
        self._await_prompt()
        shown = repr(mark)
        deadline = time.monotonic() + TIMEOUT
        while shown not in self.out[self._read :]:
            assert time.monotonic() < deadline, f"no {shown} in {self.out[self._read :]!r}"
            self._pump(0.5)
        end = self.out.index(shown, self._read)
        answer, self._read = self.out[self._read : end], end + len(shown)
        return answer

    def _await_prompt(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                msg = self.kernel.kc.get_stdin_msg(timeout=0.05)
            except queue.Empty:
                pass
            else:
                assert msg["msg_type"] == "input_request", msg
                assert msg["parent_header"]["msg_id"] == self.msg_id
                return
            assert not self.idle, f"the cell ended instead of asking: {self.out}{self.err}"
            assert time.monotonic() < deadline, f"no prompt: {self.out}{self.err}"
            self._pump(0.05)

    def _pump(self, timeout: float) -> None:
        try:
            msg = self.kernel.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return
        self.kernel._track(msg)
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        content = msg["content"]
        if msg["msg_type"] == "stream":
            text = ANSI.sub("", content["text"])
            if content["name"] == "stdout":
                self.out += text
            else:
                self.err += text
        elif msg["msg_type"] == "error":
            self.err += ANSI.sub("", "\n".join(content["traceback"]))
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            self.idle = True


@pytest.fixture(scope="module", params=list(ENGINES))
def nb(request, tmp_path_factory) -> Any:
    """One kernel per engine, shared by this module's tests (each uses its own cell names), with ``HELPER`` run."""
    kernel = Kernel({"NBFLOW_LIMITS_DIR": str(tmp_path_factory.mktemp("limits"))})
    try:
        ok(kernel, "%load_ext nbflow")
        ok(kernel, ENGINES[request.param])
        ok(kernel, HELPER)
        helper_file = ok(kernel, "print(helper.__code__.co_filename)").stream("stdout").strip()
        kernel.engine, kernel.helper_file = request.param, helper_file
        yield kernel
    finally:
        try:
            kernel.run("nbflow.engine().close()", timeout=30)  # (Dask: its workers end with the cluster)
        except queue.Empty:
            pass
        kernel.close()


def failed_cell(nb: Kernel, name: str, base: int) -> tuple[Execution, int]:
    """Submit a task cell ``name`` that fails in ``helper`` (its line 3); wait for it; its execution and In[] number."""
    ex = ok(nb, f"%%nbflow task --name {name}\nbase = {base}\n{name}_out = helper(base)")
    ok(nb, f"%nbflow wait {name}")
    status, streams = ex.display_ids()[:2]
    nb.wait_display(status, lambda d: "failed" in d.get("text/plain", ""))
    nb.wait_display(streams, lambda d: f"helper got {base}" in d.get("text/plain", ""))  # (drawn after the status)
    return ex, ex.reply["execution_count"]


def assert_unpicklable_locals(nb: Kernel, debugger: Session) -> None:
    """``f`` (an open file) and ``lock``: the objects themselves on threads, placeholders where they travelled."""
    f, lock = debugger.ask("p f").strip(), debugger.ask("p lock").strip()
    if nb.engine == "threads":
        assert f.startswith("<_io.TextIOWrapper name='/dev/null'") and "not restored" not in f, f
        assert lock.startswith("<unlocked _thread.lock object at") and "not restored" not in lock, lock
    else:
        assert f.startswith("<_io.TextIOWrapper not restored") and "an open file" in f, f
        assert lock.startswith("<_thread.lock not restored") and "cannot be pickled" in lock, lock


def test_a_failed_task_cell_shows_the_debug_hint_and_debugs_interactively(nb):
    ex, n = failed_cell(nb, "broken", 5)
    shown = nb.displays[ex.display_ids()[1]]["text/plain"]  # its streams: the traceback, then the hint
    lines = shown.rstrip("\n").split("\n")
    assert lines[-2:] == [
        "ValueError: helper got 5",
        "(%nbflow debug broken opens the debugger where it raised; %nbflow replay broken runs it again here)",
    ], shown

    with Session(nb, "%nbflow debug broken") as debugger:
        assert debugger.intro.startswith("nbflow: post-mortem of task 'broken'"), debugger.intro
        assert f"{nb.helper_file}(6)helper()" in debugger.intro  # it stops where the helper raised
        assert debugger.ask("p y").strip() == "42"
        assert debugger.ask("p x").strip() == "5"
        where = debugger.ask("where")
        cell_line = f"Cell In[{n}](3)<module>()"
        assert cell_line in where and f"> {nb.helper_file}(6)helper()" in where, where
        assert where.index(cell_line) < where.index("helper()"), where  # outermost first: the cell, then the helper
        assert "broken_out = helper(base)" in where, where
        assert_unpicklable_locals(nb, debugger)
        up = debugger.ask("up")
        assert cell_line in up and "broken_out = helper(base)" in up, up
        assert debugger.ask("p base").strip() == "5"  # a variable of the task cell, in the cell's frame
        assert debugger.ask("p 'y' in dir()").strip() == "False"  # (the helper's local is not there)
        reply = debugger.quit()
    assert reply["status"] == "ok", reply
    assert "Traceback" not in debugger.err, debugger.err
    assert ok(nb, "print(1 + 1)").stream("stdout") == "2\n"  # the kernel goes on as usual


def test_debug_without_a_name_opens_the_most_recent_failure(nb):
    failed_cell(nb, "earlier", 6)
    failed_cell(nb, "latest", 7)
    with Session(nb, "%nbflow debug") as debugger:
        assert debugger.intro.startswith("nbflow: post-mortem of task 'latest'"), debugger.intro
        assert debugger.ask("p x").strip() == "7"
        assert debugger.ask("p y").strip() == "42"
        assert_unpicklable_locals(nb, debugger)
        assert debugger.quit()["status"] == "ok"

    ok(nb, "raised = job.submit(13)\nnbflow.wait([raised])")
    shown = nb.run("raised.result()")  # the failure shown last is now one a cell raised
    assert (shown.reply["ename"], shown.reply["evalue"]) == ("ValueError", "helper got 13"), shown.reply
    with Session(nb, "%nbflow debug") as debugger:
        assert debugger.intro.startswith("nbflow: post-mortem of task 'job'"), debugger.intro
        assert debugger.ask("p x").strip() == "13"
        assert debugger.quit()["status"] == "ok"


def test_nbflow_debug_of_a_task_functions_future(nb):
    ok(nb, "fut = job.submit(9)\nnbflow.wait([fut])\nassert type(fut.exception()) is ValueError")
    with Session(nb, "nbflow.debug(fut)") as debugger:
        assert debugger.intro.startswith("nbflow: post-mortem of task 'job'"), debugger.intro
        assert debugger.ask("p y").strip() == "42"
        assert debugger.ask("p x").strip() == "9"
        up = debugger.ask("up")
        assert f"{nb.helper_file}" in up and "job()" in up and "return helper(x)" in up, up
        assert debugger.quit()["status"] == "ok"


def test_replay_of_a_failed_task_cell_raises_the_same_error(nb):
    ex, _ = failed_cell(nb, "again", 8)
    shown = nb.displays[ex.display_ids()[1]]["text/plain"]
    assert "ValueError: helper got 8" in shown
    replay = nb.run("%nbflow replay again")
    assert (replay.reply["status"], replay.reply["ename"], replay.reply["evalue"]) == (
        "error",
        "ValueError",
        "helper got 8",
    ), replay.reply
    assert "nbflow: replaying task 'again' here (attempt 1, its inputs)" in replay.stream("stdout")
    tb = ANSI.sub("", "\n".join(replay.reply["traceback"]))
    assert "in helper" in tb and 'raise ValueError(f"helper got {x}")' in tb, tb  # the task's own frames

    ok(nb, "bad = job.submit(10)\nnbflow.wait([bad])")
    replay = nb.run("%nbflow replay bad")  # a notebook variable holding a future
    assert (replay.reply["ename"], replay.reply["evalue"]) == ("ValueError", "helper got 10"), replay.reply


def test_a_replay_that_now_succeeds_returns_its_value(nb, tmp_path):
    marker = tmp_path / "ready"
    ok(nb, f"marker = {str(marker)!r}")
    code = (
        "%%nbflow task --name flaky\nimport os\nready = os.path.exists(marker)\n"
        'if not ready:\n    raise RuntimeError("not ready yet")\nanswer = 6 * 7\nanswer + 1'
    )
    ex = ok(nb, code)
    ok(nb, "%nbflow wait flaky")
    assert (
        "RuntimeError: not ready yet"
        in nb.wait_display(ex.display_ids()[1], lambda d: "Error" in d.get("text/plain", ""))["text/plain"]
    )
    marker.write_text("now")
    replay = ok(nb, "%nbflow replay flaky")
    results = [m["content"]["data"]["text/plain"] for m in replay.messages if m["msg_type"] == "execute_result"]
    assert results == ["43"], replay.messages  # its last expression, shown as a cell's
    assert ok(nb, "print(answer, ready)").stream("stdout") == "42 True\n"  # its outputs, bound in the notebook

    ok(nb, "g = guarded.submit(21)\nnbflow.wait([g])\nassert type(g.exception()) is RuntimeError")
    failing = nb.run("g.replay()")
    assert (failing.reply["ename"], failing.reply["evalue"]) == ("RuntimeError", "not allowed yet: 21")
    ok(nb, "allowed = True")
    assert ok(nb, "print(g.replay())").stream("stdout") == "42\n"
    replay = ok(nb, "%nbflow replay g")
    results = [m["content"]["data"]["text/plain"] for m in replay.messages if m["msg_type"] == "execute_result"]
    assert results == ["42"], replay.messages
    assert ok(nb, "print(g.status, type(g.exception()).__name__)").stream("stdout") == "error RuntimeError\n"


def test_debug_of_a_task_cell_that_finished_says_it_did_not_fail(nb):
    ok(nb, "%%nbflow task --name fine\nfine_value = 1")
    ok(nb, "%nbflow wait fine")
    ex = nb.run("%nbflow debug fine")
    assert ex.reply["status"] == "error" and ex.reply["ename"] == "NbflowError", ex.reply
    errors = [m["content"]["traceback"] for m in ex.messages if m["msg_type"] == "error"]
    assert errors == [["NbflowError: task cell 'fine' did not fail: it finished"]], errors
    ex = nb.run("%nbflow replay fine_value")
    assert ex.reply["ename"] == "NbflowError" and "did not fail" in ex.reply["evalue"], ex.reply


def test_other_task_cells_run_and_finish_while_pdb_waits(nb, tmp_path):
    failed_cell(nb, "stuck", 11)
    go = tmp_path / "go"
    ok(nb, f"go = {str(go)!r}")
    other = ok(
        nb,
        "%%nbflow task --name other\nimport os, time\nuntil = time.monotonic() + 120\n"
        "while not os.path.exists(go) and time.monotonic() < until:\n    time.sleep(0.02)\n"
        'seen = os.path.exists(go)\nprint("other saw the file:", seen)',
    )
    status, streams = other.display_ids()[:2]
    with Session(nb, "%nbflow debug stuck") as debugger:
        assert debugger.ask("p y").strip() == "42"
        assert "done" not in nb.displays[status]["text/plain"]  # it waits for the file
        go.write_text("")  # pdb is waiting for input now
        done = debugger.wait_display(status, lambda d: "done in" in d.get("text/plain", ""))
        assert done["text/plain"].startswith("[nbflow] other: done in"), done
        printed = debugger.wait_display(streams, lambda d: d.get("text/plain"))  # (sent just after the status)
        assert printed["text/plain"] == "other saw the file: True", printed
        assert debugger.ask("p x").strip() == "11"  # the debugger is still there, as it was
        assert debugger.quit()["status"] == "ok"
    assert ok(nb, "print(seen)").stream("stdout") == "True\n"
