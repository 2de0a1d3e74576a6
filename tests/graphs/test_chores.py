"""The ingress's periodic upkeep (issue #14, 7): its own thread and intervals, apart from the
health check; a failing chore is counted and does not stop the others."""

from __future__ import annotations

import threading
from datetime import timedelta

from graphs.chores import Chores


class FakeRecords:
    def __init__(self, *, fail_sessions: bool = False):
        self.stale_calls: list[float] = []
        self.expire_calls: list[timedelta] = []
        self.fail_sessions = fail_sessions
        self.swept = threading.Event()

    def fail_stale_jobs(self, *, older_than_s: float) -> list[str]:
        self.stale_calls.append(older_than_s)
        self.swept.set()
        return ["job_1", "job_2"]

    def expire_sessions(self, *, older_than: timedelta) -> list[str]:
        self.expire_calls.append(older_than)
        if self.fail_sessions:
            raise RuntimeError("database is gone")
        return []


def test_each_chore_runs_on_its_own_interval():
    records = FakeRecords()
    chores = Chores(records=records, job_stale_s=60, session_ttl_s=3600, jobs_every_s=10,
                    sessions_every_s=300)
    assert chores.run_due(now=1000.0) == ["stale_jobs", "expire_sessions"]
    assert chores.run_due(now=1005.0) == []
    assert chores.run_due(now=1010.0) == ["stale_jobs"]
    assert chores.run_due(now=1300.0) == ["stale_jobs", "expire_sessions"]
    assert records.stale_calls == [60, 60, 60]
    assert records.expire_calls == [timedelta(seconds=3600)] * 2


def test_a_failing_chore_is_counted_and_the_others_go_on(caplog):
    records = FakeRecords(fail_sessions=True)
    chores = Chores(records=records, job_stale_s=60, session_ttl_s=3600)
    chores.run_due(now=0.0)
    chores.run_due(now=300.0)
    stats = chores.stats()
    assert stats["expire_sessions"] == {"every_s": 300.0, "runs": 2, "failures": 2}
    assert stats["stale_jobs"]["runs"] == 2 and stats["stale_jobs"]["failures"] == 0
    assert "chore expire_sessions failed" in caplog.text


def test_the_thread_runs_the_chores_and_stops():
    records = FakeRecords()
    chores = Chores(records=records, job_stale_s=60, session_ttl_s=3600).start()
    try:
        assert records.swept.wait(10), "the chores thread never swept stale jobs"
    finally:
        chores.stop()
    assert not chores._thread.is_alive()
