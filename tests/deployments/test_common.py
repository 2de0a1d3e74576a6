"""deployments/_common.py without Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, threading
    from deployments._common import lower_cpu_priority

    def nice_of(tid):  # field 19 of /proc/<pid>/task/<tid>/stat, after the command's ")"
        stat = open(f"/proc/self/task/{tid}/stat").read()
        return int(stat.rsplit(")", 1)[1].split()[16])

    stop = threading.Event()
    before = threading.Thread(target=stop.wait)  # a thread that exists before the call
    before.start()
    start = os.getpriority(os.PRIO_PROCESS, 0)
    print(lower_cpu_priority(0) == start)
    got = lower_cpu_priority(3)
    after = threading.Thread(target=stop.wait)  # and one started after it
    after.start()  # returns once the thread runs
    print(got == min(19, start + 3))
    print(sorted({nice_of(t) for t in os.listdir("/proc/self/task")}) == [got])
    print(lower_cpu_priority(40) == 19)
    stop.set()
""")


def test_lower_cpu_priority_renices_every_thread_of_the_process(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=60, cwd=str(tmp_path),
                         env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"] * 4, out.stdout


def test_model_thread_runs_every_call_on_one_thread_with_the_callers_context():
    import asyncio
    import contextvars
    import threading

    import pytest

    from deployments._common import ModelThread

    var = contextvars.ContextVar("request_id", default=None)
    worker = ModelThread("test-model")
    loader = worker.call(threading.get_ident)
    assert loader != threading.get_ident()  # not the caller's thread

    async def calls():
        var.set("req-1")
        seen = await asyncio.gather(*(worker.run(lambda: (threading.get_ident(), var.get()))
                                      for _ in range(8)))
        with pytest.raises(ValueError, match="bad size"):
            await worker.run(int, "bad size")  # the call's error reaches the caller
        return seen

    seen = asyncio.run(calls())
    assert {ident for ident, _ in seen} == {loader}  # the loading thread, every time
    assert {rid for _, rid in seen} == {"req-1"}
    assert worker.thread_id == loader
