"""Overload: 10x the configured capacity for 60 s against the production graph with tiny
models (serve_config.yaml as deployed, tiny weights), on the generation and a tool route.

1. Capacity, per route: closed loop with as many clients as the config runs requests at
   once on the route's deployment (``max_ongoing_requests``: Generator for generations
   64x64 / 4 steps, Matting for background removal of a 256x256 PNG), both routes at once
   (one machine's cores serve both); capacity = the successful requests/s each sustains.
2. Overload: open-loop Poisson arrivals at `--factor` (10) x each route's capacity for
   `--seconds` (60),
   80 % from a key with room to spare, 20 % from a key limited to 10 requests/min (its
   excess must be 429). Every request must end in 200, 429 or 503 (the last two with the
   error envelope and Retry-After) within `--timeout`; anything else (500, 504, no answer,
   Serve's plain-text 503) is a failure. /healthz is probed every second throughout.
3. Afterwards no job may be left `running`.

Prints counts per status (and per route), p50/p99 of accepted requests, how fast 429/503
came back, the probes' p99; exits 1 on any failure. `--quick`: 6 s capacity, 8 s overload.

    .venv/bin/python bench/overload.py [--seconds 60] [--factor 10] [--timeout 130] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._serving import (  # noqa: E402
    GENERATION,
    closed_loop,
    deployment_options,
    open_loop,
    pct,
    print_haproxy_stats,
    production_gateway,
    summarize,
    tiny_png,
)

ROUTES = {"generation": "Generator", "tool": "Matting"}  # route -> the deployment it loads


def configured(config: dict) -> dict:
    from graphs.middleware import admission_limit

    out = {}
    for name in ("Ingress", "Generator", "Matting"):
        d = deployment_options(config, name)
        out[name] = {"max_ongoing_requests": d.get("max_ongoing_requests"),
                     "max_queued_requests": d.get("max_queued_requests")}
    ingress = out["Ingress"]
    ingress["admitted_in_flight"] = admission_limit(ingress["max_ongoing_requests"])
    return out


def fixed_replicas() -> dict[str, dict]:
    """Every autoscaled deployment fixed at its `min_replicas` (the overrides for
    `production_gateway`). This bench runs the whole cluster on one small machine, whose
    cores the overload already fills: a replica the autoscaler adds there only takes CPU from
    the others (starting a worker process imports torch) and makes HAProxy reload, and it
    would be measured as capacity the machine does not have. On a cluster the new replicas
    land on new nodes; `--autoscale` keeps the config's autoscaling anyway."""
    import yaml

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return {d["name"]: {"num_replicas": d["autoscaling_config"].get("min_replicas", 1)}
            for d in config["applications"][0]["deployments"] if "autoscaling_config" in d}


async def no_job_running(base_url: str, token: str, timeout_s: float) -> int:
    """Running jobs left after `timeout_s` (polls GET /v1/jobs?status=running)."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{base_url}/v1/jobs", params={"status": "running"},
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                running = len((await resp.json())["data"])
            if running == 0 or time.monotonic() > deadline:
                return running
            await asyncio.sleep(1)


async def bench(args: argparse.Namespace, gateway) -> int:
    import aiohttp

    limits = configured(gateway.config)
    print(f"configured: {json.dumps(limits)}")
    main = gateway.create_key("bench-main", scopes=["generate", "tools"],
                              requests_per_minute=10_000_000, images_per_day=10_000_000)
    limited = gateway.create_key("bench-limited", scopes=["generate", "tools"],
                                 requests_per_minute=10, images_per_day=10_000_000)
    png = tiny_png(args.tool_size)
    GENERATION["steps"] = args.gen_steps

    warm = await closed_loop(gateway.base_url, routes=list(ROUTES), token=main, concurrency=2,
                             seconds=2, timeout_s=args.timeout, png=png)
    if any(o.problem for o in warm):
        print(f"warm-up failed: {summarize(warm)['problems']}")
        return 1
    capacity: dict[str, float] = {}
    if args.rate:
        capacity = {route: args.rate / args.factor / len(ROUTES) for route in ROUTES}
    else:
        # Both routes at once: the deployments share this machine's cores, so each route's
        # capacity measured alone would count the same CPU twice (each alone fills it).
        began = time.perf_counter()
        cals = await asyncio.gather(*(
            closed_loop(gateway.base_url, routes=[route], token=main,
                        concurrency=limits[deployment]["max_ongoing_requests"],
                        seconds=args.calibrate_seconds, timeout_s=args.timeout, png=png)
            for route, deployment in ROUTES.items()))
        # every success over the whole run, the wait for the last answers included (a
        # window would see none when one request takes longer than it, on a busy machine)
        took = time.perf_counter() - began
        for (route, deployment), cal in zip(ROUTES.items(), cals, strict=True):
            capacity[route] = sum(1 for o in cal if o.status == 200) / took
            s = summarize(cal)
            print(f"capacity {route}: {capacity[route]:.1f} req/s with "
                  f"{limits[deployment]['max_ongoing_requests']} clients ({deployment} "
                  f"max_ongoing_requests; both routes at once; p50 "
                  f"{s['accepted_p50_s'] * 1e3:.0f} ms, p99 {s['accepted_p99_s'] * 1e3:.0f} ms, "
                  f"statuses {s['by_status']})")
            if capacity[route] <= 0:
                print(f"no successful {route} request while measuring capacity")
                return 1
    rates = {route: args.factor * c for route, c in capacity.items()}
    rate = sum(rates.values())
    print(f"overload: {rate:.1f} req/s ({args.factor:g}x: "
          + ", ".join(f"{r} {v:.1f}/s" for r, v in rates.items())
          + f") for {args.seconds:g}s, timeout {args.timeout:g}s, 20 % of requests from a "
          "10/min key")

    probes: list[float] = []
    probe_failures: list[str] = []

    async def probe(_elapsed: float) -> None:
        async def one() -> None:
            t = time.perf_counter()
            try:
                async with aiohttp.ClientSession() as s, s.get(
                        f"{gateway.base_url}/healthz",
                        timeout=aiohttp.ClientTimeout(total=args.timeout)) as r:
                    await r.read()
                    if r.status != 200:
                        probe_failures.append(f"HTTP {r.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                probe_failures.append(type(exc).__name__)
            probes.append(time.perf_counter() - t)

        asyncio.ensure_future(one())

    started = time.perf_counter()
    outcomes = await open_loop(gateway.base_url, routes=rates,
                               keys=[("main", main, 0.8), ("limited", limited, 0.2)],
                               seconds=args.seconds, timeout_s=args.timeout, png=png,
                               on_tick=probe)
    elapsed = time.perf_counter() - started
    s = summarize(outcomes)
    limited_429 = sum(1 for o in outcomes if o.key == "limited" and o.status == 429)
    main_429 = sum(1 for o in outcomes if o.key == "main" and o.status == 429)
    print(f"sent {s['requests']} requests in {elapsed:.1f}s (all answered or timed out)")
    print(f"by status: {s['by_status']}")
    for route, counts in s["by_route"].items():
        print(f"  {route}: {counts}")
    print(f"429s: {limited_429} from the 10/min key, {main_429} from the main key")
    print(f"accepted: p50 {s['accepted_p50_s'] * 1e3:.0f} ms, p99 "
          f"{s['accepted_p99_s'] * 1e3:.0f} ms, max {s['accepted_max_s'] * 1e3:.0f} ms; "
          f"429/503 answered within p99 {s['shed_p99_s'] * 1e3:.0f} ms")
    print(f"  of which the job in the ingress (model call + storing): p50 "
          f"{s['accepted_job_p50_s'] * 1e3:.0f} ms, p99 {s['accepted_job_p99_s'] * 1e3:.0f} ms")
    print(f"/healthz during overload: {len(probes)} probes, p99 "
          f"{pct(probes, 99) * 1e3:.0f} ms, failures {len(probe_failures)}")
    print_haproxy_stats()
    failures = s["failures"]
    if s["problems"]:
        print(f"FAILURES ({failures}):")
        for problem, n in s["problems"].items():
            print(f"  {n} x {problem}")
    if probe_failures:
        failures += len(probe_failures)
        print(f"FAILED health probes: {probe_failures[:5]}")
    if main_429:
        failures += main_429
        print(f"FAILED: {main_429} 429s for the key with room to spare")
    running = await no_job_running(gateway.base_url, main, timeout_s=args.timeout + 30)
    if running:
        failures += running
        print(f"FAILED: {running} job(s) still running {args.timeout + 30:g}s after the load")
    else:
        print("no job left running")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "configured": limits, "capacity_rps": capacity, "rate_rps": rates,
            "seconds": args.seconds, "summary": s, "probe_p99_s": pct(probes, 99),
            "failures": failures}, indent=2))
    print("PASS" if failures == 0 else f"FAIL: {failures} bad outcome(s)")
    return 0 if failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=10, help="x the measured capacity")
    parser.add_argument("--calibrate-seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, help="overload rate (req/s) instead of "
                        "factor x measured capacity")
    parser.add_argument("--timeout", type=float, default=130, help="client timeout per "
                        "request: past the ingress's request_timeout_s (120 s), whose 504 "
                        "counts as a failure too")
    parser.add_argument("--quick", action="store_true", help="6 s capacity, 8 s overload")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--gen-steps", type=int, default=GENERATION["steps"],
                        help="denoising steps of each generation (64x64)")
    parser.add_argument("--tool-size", type=int, default=256, help="side of the PNG whose "
                        "background is removed")
    parser.add_argument("--haproxy", action="store_true", help="HAProxy in front instead of "
                        "Serve's Python proxy")
    parser.add_argument("--autoscale", action="store_true", help="keep the config's "
                        "autoscaling (default: every deployment fixed at its min_replicas; "
                        "see fixed_replicas)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.calibrate_seconds = 8, 6
    from bench._common import machine, match_worker_priority

    print(f"machine: {machine()}")
    deployments = None if args.autoscale else fixed_replicas()
    with production_gateway(haproxy=args.haproxy, deployments=deployments) as gateway:
        match_worker_priority()
        return asyncio.run(bench(args, gateway))


if __name__ == "__main__":
    sys.exit(main())
