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
