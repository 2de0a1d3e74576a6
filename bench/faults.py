"""Faults under steady load on the production graph (serve_config.yaml, tiny models), with
2 Ingress replicas (``num_replicas: 2`` override):

(a) kill the Generator replica (``ray.kill`` of its actor, no restart), then, once the
    service has recovered,
(b) kill one of the two Ingress replicas.

Steady open-loop load throughout (`--rate` req/s, half sync generations, half async
generation jobs of 12 steps, so some are running at each kill). Afterwards:

- every async job ends `succeeded` or `failed` with a reason; none stays `queued`/`running`
  (GET /v1/jobs?status=running and the record store, after the stale-job sweep had time:
  a job whose ingress replica died is failed by the sweep after `job_stale_s`);
- every recorded asset's bytes exist, match the recorded size, and decode (no half-written
  asset), fetched through GET /v1/assets/{id}; leftover ``.part`` files are counted;
- recovery per kill: the first successful generation sent after the kill, and when Serve
  reports the deployment HEALTHY again with all its replicas RUNNING.

Exits 1 when a job is left running, a failed job has no reason, an asset is broken, or the
service did not recover within `--recover-timeout`. Requests in flight at a kill are counted
per status (a request on a killed replica may fail: that is the fault, not a finding); a 500
with the error envelope is reported as a bug.

    .venv/bin/python bench/faults.py [--rate 0.2] [--quick]

`--quick`: shorter phases and ``job_stale_s`` 20 s (the production default is 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._serving import Outcome, production_gateway, send, session_for, tiny_png  # noqa: E402

APP = "photostudio"


def replica_actors(deployment: str) -> list[str]:
    """Named actors of a deployment's live replicas (``SERVE_REPLICA::app#Deployment#id``)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::")
                  and f"#{deployment}#" in a["name"])


def kill(actor_name: str) -> None:
    import ray

    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)


class StatusWatch(threading.Thread):
    """Polls `serve.status()` every 0.2 s: (monotonic time, deployment, status, replica
    states) for every change."""

    def __init__(self, deployments: list[str]):
        super().__init__(daemon=True)
        self.deployments = deployments
        self.timeline: list[tuple[float, str, str, dict]] = []
        self.last: dict[str, tuple[str, dict]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            try:
                app = serve.status().applications.get(APP)
            except Exception as exc:  # the controller answers again later  # noqa: BLE001
                print(f"  serve.status failed: {type(exc).__name__}: {exc}")
                app = None
            if app is not None:
                for name in self.deployments:
                    d = app.deployments.get(name)
                    if d is None:
                        continue
                    state = (str(d.status.value if hasattr(d.status, "value") else d.status),
                             dict(d.replica_states))
                    if self.last.get(name) != state:
                        self.last[name] = state
                        self.timeline.append((time.monotonic(), name, *state))
            self.stop.wait(0.2)

    def healthy_again(self, name: str, after: float, replicas: int) -> float | None:
        """First time after `after` that `name` is HEALTHY with `replicas` RUNNING, having
        left that state after `after` first."""
        left = False
        for t, dep, status, states in self.timeline:
            if dep != name or t < after:
                continue
            ok = status == "HEALTHY" and states.get("RUNNING") == replicas and len(states) == 1
            if not ok:
                left = True
            elif left:
                return t
        return None

    def changes(self, name: str, after: float) -> list[str]:
        return [f"+{t - after:.1f}s {status} {states}" for t, dep, status, states
                in self.timeline if dep == name and t >= after]


async def wait_recovered(gateway, token: str, png: bytes, watch: StatusWatch,
                         deployment: str, replicas: int, killed_at: float,
                         timeout_s: float) -> tuple[float | None, float | None]:
    """(first success sent after the kill, Serve HEALTHY again), in seconds after the kill;
    None: not within `timeout_s`. Probes one request at a time, besides the load: a sync
    generation for the Generator, an authenticated GET /v1/jobs (answered by the ingress
    alone) for the Ingress."""
    import aiohttp

    first_ok = healthy = None
    deadline = killed_at + timeout_s
    async with session_for() as session:
        while time.monotonic() < deadline and (first_ok is None or healthy is None):
            if first_ok is None:
                sent = time.monotonic()
                if deployment == "Generator":
                    o = await send(session, gateway.base_url, "generation", "probe", token,
                                   png, min(30.0, deadline - sent))
                    status = o.status
                else:
                    try:
                        async with session.get(
                                f"{gateway.base_url}/v1/jobs",
                                headers={"Authorization": f"Bearer {token}"},
                                timeout=aiohttp.ClientTimeout(total=10)) as r:
                            status = r.status
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        status = None
                if status == 200:
                    first_ok = time.monotonic() - killed_at
                    print(f"  first success after {first_ok:.1f}s (probe sent at "
                          f"+{sent - killed_at:.1f}s)")
                else:
                    await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(0.5)
            if healthy is None:
                t = watch.healthy_again(deployment, killed_at, replicas)
                if t is not None:
                    healthy = t - killed_at
                    print(f"  Serve reports {deployment} HEALTHY with {replicas} replica(s) "
                          f"RUNNING after {healthy:.1f}s")
    return first_ok, healthy


class Load:
    """Open-loop Poisson arrivals at `rate` req/s until `stop()`: half sync generations, half
    async jobs. Keeps every outcome with its route and (monotonic) start."""

    def __init__(self, gateway, token: str, rate: float, png: bytes, timeout_s: float):
        self.gateway, self.token, self.rate, self.png = gateway, token, rate, png
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        rng = random.Random(0)
        tasks: list[asyncio.Task] = []
        async with session_for() as session:
            async def one(route: str) -> None:
                sent = time.monotonic()
                o = await send(session, self.gateway.base_url, route, "load", self.token,
                               self.png, self.timeout_s)
                o.started = sent  # monotonic, to compare with the kills
                self.outcomes.append(o)

            while not self._stop.is_set():
                route = "generation" if rng.random() < 0.5 else "generation_async"
                tasks.append(asyncio.create_task(one(route)))
                try:
                    await asyncio.wait_for(self._stop.wait(), rng.expovariate(self.rate))
                except asyncio.TimeoutError:
                    pass
            await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()


async def start_jobs(gateway, token: str, n: int, steps: int) -> list[str]:
    """`n` async generation jobs of `steps` steps; returns their ids once one is running
    (so the kill that follows catches work in flight)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    body = {"prompt": "a job in flight at the kill", "size": "64x64", "steps": steps,
            "response_format": "url"}
    async with aiohttp.ClientSession(headers=headers) as session:
        ids = []
        for _ in range(n):
            async with session.post(f"{gateway.base_url}/v1/images/generations",
                                    params={"async": "true"}, json=body) as resp:
                if resp.status == 202:
                    ids.append((await resp.json())["id"])
        deadline = time.monotonic() + 60
        while ids and time.monotonic() < deadline:
            statuses = []
            for job_id in ids:
                async with session.get(f"{gateway.base_url}/v1/jobs/{job_id}") as resp:
                    statuses.append((await resp.json()).get("status"))
            if "running" in statuses:
                break
            await asyncio.sleep(0.3)
        return ids


def describe(outcomes: list[Outcome]) -> str:
    c = Counter(("timeout/error" if o.status is None else str(o.status)) for o in outcomes)
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "none"


async def jobs_left_running(base_url: str, token: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        n = 0
        for status in ("queued", "running"):
            async with session.get(f"{base_url}/v1/jobs", params={"status": status},
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                n += len((await resp.json())["data"])
        return n


def check_assets(gateway, token: str) -> tuple[int, list[str], int]:
    """(assets checked, problems, leftover .part files). Every recorded asset: its bytes
    through GET /v1/assets/{id}, the recorded size, and a full decode."""
    import httpx
    from PIL import Image

    from storage.records import RecordStore

    records = RecordStore(gateway.database_url)
    views = []
    try:
        cursor = None
        while True:
            page = records.list_assets(project="default", limit=200, cursor=cursor)
            views.extend(page.items)
            cursor = page.next_cursor
            if not cursor:
                break
    finally:
        records.close()
    problems = []
    with httpx.Client(base_url=gateway.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for v in views:
            r = http.get(f"/v1/assets/{v.id}")
            if r.status_code != 200:
                problems.append(f"{v.id}: GET {r.status_code} {r.text[:120]}")
                continue
            if len(r.content) != v.size_bytes:
                problems.append(f"{v.id}: {len(r.content)} bytes, recorded {v.size_bytes}")
                continue
            try:
                with Image.open(io.BytesIO(r.content)) as img:
                    img.load()
                    if img.size != (v.width, v.height):
                        problems.append(f"{v.id}: {img.size}, recorded "
                                        f"{(v.width, v.height)}")
            except Exception as exc:  # any decode error is the finding  # noqa: BLE001
                problems.append(f"{v.id}: does not decode ({type(exc).__name__}: {exc})")
    parts = len(list((gateway.data_dir / "assets").rglob("*.part")))
    return len(views), problems, parts


def job_outcomes(gateway, job_ids: list[str]) -> tuple[Counter, list[str], list[str]]:
    """(status counts, jobs not ended, failed jobs without a reason), from the record store."""
    from storage.records import RecordStore

    records = RecordStore(gateway.database_url)
    counts: Counter = Counter()
    open_jobs, no_reason = [], []
    reasons: Counter = Counter()
    try:
        for job_id in job_ids:
            job = records.get_job(job_id=job_id, project="default")  # the bench key's
            if job is None:
                open_jobs.append(f"{job_id}: no record")
                continue
            counts[job.status] += 1
            if job.status in ("queued", "running"):
                open_jobs.append(f"{job_id}: {job.status}")
            elif job.status == "failed":
                if not job.error:
                    no_reason.append(job_id)
                else:
                    reasons[job.error[:90]] += 1
    finally:
        records.close()
    for reason, n in reasons.most_common(5):
        print(f"    failed x{n}: {reason}")
    return counts, open_jobs, no_reason


async def bench(args: argparse.Namespace, gateway) -> int:
    failures: list[str] = []
    token = gateway.create_key("bench-faults", scopes=["generate", "tools", "admin"],
                               requests_per_minute=10_000_000, images_per_day=10_000_000)
    png = tiny_png()
    ingress_replicas = len(replica_actors("Ingress"))
    print(f"replicas: Ingress {ingress_replicas}, Generator {len(replica_actors('Generator'))}")
    watch = StatusWatch(["Ingress", "Generator"])
    watch.start()
    t0 = time.monotonic()
    load = Load(gateway, token, args.rate, png, args.timeout)
    load_task = asyncio.create_task(load.run())
    results: dict[str, dict] = {}
    inflight_jobs: dict[str, list[str]] = {}
    try:
        await asyncio.sleep(args.warm)
        print(f"steady load {args.rate:g} req/s for {args.warm:g}s: {describe(load.outcomes)}")
        for deployment in ("Generator", "Ingress"):
            burst = await start_jobs(gateway, token, args.burst, args.burst_steps)
            inflight_jobs[deployment] = burst
            actors = replica_actors(deployment)
            replicas = len(actors)
            victim = actors[0]
            n_before = len(load.outcomes)
            killed_at = time.monotonic()
            await asyncio.to_thread(kill, victim)
            print(f"killed {deployment} replica {victim.split('#')[-1]} "
                  f"(of {len(actors)}) at +{killed_at - t0:.0f}s")
            first_ok, healthy = await wait_recovered(
                gateway, token, png, watch, deployment, replicas, killed_at,
                args.recover_timeout)
            for line in watch.changes(deployment, killed_at):
                print(f"    {deployment} {line}")
            await asyncio.sleep(args.settle)
            during = load.outcomes[n_before:]
            results[deployment] = {"first_success_s": first_ok, "healthy_s": healthy,
                                   "outcomes_after_kill": describe(during)}
            print(f"  load answers after the kill: {describe(during)}")
            if first_ok is None or healthy is None:
                failures.append(f"{deployment}: not recovered within "
                                f"{args.recover_timeout:g}s (first success {first_ok}, "
                                f"HEALTHY {healthy})")
        await asyncio.sleep(args.tail)
    finally:
        load.stop()
        await load_task
        watch.stop.set()

    outcomes = load.outcomes
    print(f"load: {len(outcomes)} requests: {describe(outcomes)}")
    bugs = Counter(o.problem for o in outcomes
                   if o.status == 500 and o.problem and '"error"' in o.problem)
    other = Counter(o.problem for o in outcomes if o.problem)
    for problem, n in other.most_common(8):
        print(f"  {n} x {problem[:160]}")
    if bugs:
        failures.append(f"{sum(bugs.values())} HTTP 500 with the envelope (a bug)")
    job_ids = [o.body["id"] for o in outcomes if o.status == 202 and o.body]
    job_ids += [j for ids in inflight_jobs.values() for j in ids]

    # A job whose ingress replica died is failed by the stale-job sweep (job_stale_s, run by
    # every ingress replica's health check): wait for it.
    stale_s = gateway.config["applications"][0]["args"].get("job_stale_s", 60)
    wait_s = stale_s + 2 * 10 + 30
    began = time.monotonic()
    while True:
        left = await jobs_left_running(gateway.base_url, token)
        if left == 0 or time.monotonic() - began > wait_s:
            break
        await asyncio.sleep(2)
    print(f"jobs queued/running after the load: {left} "
          f"(waited {time.monotonic() - began:.0f}s, job_stale_s {stale_s:g})")
    counts, open_jobs, no_reason = job_outcomes(gateway, job_ids)
    for deployment, ids in inflight_jobs.items():
        c, _, _ = job_outcomes(gateway, ids)
        results[deployment]["jobs_in_flight_at_kill"] = dict(c)
        print(f"  {len(ids)} jobs started just before the {deployment} kill: {dict(c)}")
    print(f"async jobs: {len(job_ids)} accepted: {dict(counts)}")
    if left or open_jobs:
        failures.append(f"jobs left open: {left} by the API, {open_jobs[:5]} in the store")
    if no_reason:
        failures.append(f"failed jobs without a reason: {no_reason[:5]}")
    n_assets, asset_problems, parts = await asyncio.to_thread(check_assets, gateway, token)
    print(f"assets: {n_assets} recorded, {len(asset_problems)} broken; "
          f"{parts} leftover .part file(s)")
    failures.extend(asset_problems[:10])
    def fmt(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f}s"

    for deployment, r in results.items():
        print(f"RECOVERY {deployment}: first success {fmt(r['first_success_s'])}, "
              f"HEALTHY {fmt(r['healthy_s'])} after the kill")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rate": args.rate, "recovery": results, "load": describe(outcomes),
            "jobs": dict(counts), "assets": n_assets, "broken_assets": asset_problems,
            "part_files": parts, "failures": failures}, indent=2))
    if failures:
        print("FAIL:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("PASS")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.2, help="steady load, req/s")
    parser.add_argument("--warm", type=float, default=20, help="load before the first kill")
    parser.add_argument("--settle", type=float, default=10, help="load after a recovery")
    parser.add_argument("--tail", type=float, default=10, help="load after the last kill")
    parser.add_argument("--timeout", type=float, default=120, help="client timeout")
    parser.add_argument("--recover-timeout", type=float, default=180)
    parser.add_argument("--job-stale-s", type=float, help="the builder's job_stale_s "
                        "(default: serve_config.yaml's)")
    parser.add_argument("--burst", type=int, default=3, help="async jobs started just "
                        "before each kill (in flight when it lands)")
    parser.add_argument("--burst-steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.warm, args.settle, args.tail = 8, 3, 3
        if args.job_stale_s is None:
            args.job_stale_s = 20
    app_args = {"job_stale_s": args.job_stale_s} if args.job_stale_s else None
    from bench._common import machine, match_worker_priority

    print(f"machine: {machine()}")
    with production_gateway(deployments={"Ingress": {"num_replicas": 2}},
                            app_args=app_args) as gateway:
        match_worker_priority()
        return asyncio.run(bench(args, gateway))


if __name__ == "__main__":
    sys.exit(main())
