"""The ingress's periodic upkeep, apart from its health check: one background thread per
ingress replica, with its own intervals and a metric (`photostudio_chores_total`).

- stale jobs: a running job whose worker stopped beating for `job_stale_s` (its replica
  died) is marked failed with a reason, never left running (every `jobs_every_s`);
- idle chat sessions: deleted after `session_ttl_s` (every `sessions_every_s`).

Every ingress replica runs them; both are idempotent single statements, so replicas racing
each other only repeat a no-op. A failing chore is logged and counted, and runs again at its
next turn: it never stops the others, nor the replica's health check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from telemetry import metrics

logger = logging.getLogger("ray.serve")


@dataclass
class Chore:
    name: str
    every_s: float
    run: Callable[[], int]  # returns how many records it changed
    next_at: float = 0.0  # monotonic time of the next run (0: at once)
    runs: int = 0
    failures: int = 0


class Chores:
    def __init__(self, *, records, job_stale_s: float, session_ttl_s: float,
                 jobs_every_s: float = 10.0, sessions_every_s: float = 300.0):
        self.records = records
        self.chores = [
            Chore("stale_jobs", jobs_every_s, lambda: self._fail_stale_jobs(job_stale_s)),
            Chore("expire_sessions", sessions_every_s,
                  lambda: self._expire_sessions(session_ttl_s)),
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fail_stale_jobs(self, older_than_s: float) -> int:
        stale = self.records.fail_stale_jobs(older_than_s=older_than_s)
        if stale:
            logger.warning("marked %d stale job(s) failed: %s", len(stale), stale[:5])
        return len(stale)

    def _expire_sessions(self, ttl_s: float) -> int:
        expired = self.records.expire_sessions(older_than=timedelta(seconds=ttl_s))
        if expired:
            logger.info("expired %d idle chat session(s)", len(expired))
        return len(expired)

    def run_due(self, now: float | None = None) -> list[str]:
        """Run the chores whose turn has come; returns their names (tests call it directly)."""
        now = time.monotonic() if now is None else now
        ran = []
        for chore in self.chores:
            if now < chore.next_at:
                continue
            chore.next_at = now + chore.every_s
            chore.runs += 1
            ran.append(chore.name)
            try:
                changed = chore.run()
            except Exception:  # noqa: BLE001 - logged and counted; it runs again next turn
                chore.failures += 1
                logger.exception("chore %s failed; it runs again in %.0f s", chore.name,
                                 chore.every_s)
                metrics.record_chore(chore.name, ok=False)
            else:
                metrics.record_chore(chore.name, ok=True, changed=changed)
        return ran

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            wait = min(c.next_at for c in self.chores) - time.monotonic()
            self._stop.wait(max(0.05, wait))

    def start(self) -> Chores:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ingress-chores",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> dict[str, dict[str, float]]:
        return {c.name: {"every_s": c.every_s, "runs": c.runs, "failures": c.failures}
                for c in self.chores}
