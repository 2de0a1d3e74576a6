"""The production graph on a simulated multi-node cluster (bench/_cluster.py: a CPU head and
two one-GPU workers on this one machine; Postgres records, moto S3 assets, Redis limits):

1. hop: the added latency of an ingress -> replica handle call across raylets (front on the
   head, echo on worker_a) versus on one raylet (both on worker_a), p50/p99, with an empty
   payload and a 512x512x3 image array (what a Generator returns); measured inside the front
   replica (bench/_hop_app.py), so HTTP is not in the number;
2. recovery: under a steady trickle of generations (2 clients), SIGKILL the raylet of the
   worker running the Generator; report the time from the kill to the first success of a
   request sent after it (target <= 30 s), and until Serve reports every lost deployment
   HEALTHY with its replicas RUNNING on the survivor. `--rounds` > 1 rejoins a fresh worker
   node and kills the Generator's node again.

The simulated nodes share this machine's cores: no throughput scaling can be read from it
(per-GPU capacity comes from bench/sd_gpu.py / bench/gpu_packing.py on a real GPU).

    .venv/bin/python bench/cluster.py [--rounds 2] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench._cluster import (  # noqa: E402
    APP,
    SimCluster,
    _wait,
    cluster_config,
    placement,
    stop_on_signal,
)
from bench._common import machine, pct  # noqa: E402
from bench._serving import rate_limit_storage  # noqa: E402

S3_KEY, S3_SECRET, S3_REGION = "AKIDCLUSTERBENCH", "cluster-bench-secret-0123456789", "us-east-1"
SMALL = {name: {"autoscaling_config": {"max_replicas": 1}}
         for name in ("Ingress", "Matting", "FaceSwap", "Upscaler", "Router", "LLM",
                      "Generator")}


def hop_app(name: str, front: str, echo: str) -> dict:
    return {"name": name, "route_prefix": f"/{name}", "import_path": "bench._hop_app:build",
            "deployments": [
                {"name": "HopFront", "ray_actor_options": {"num_cpus": 0,
                                                           "resources": {front: 0.01}}},
                {"name": "HopEcho", "ray_actor_options": {"num_cpus": 0,
                                                          "resources": {echo: 0.01}}}]}


def postgres_database() -> str:
    import psycopg

    name = f"ps_bench_{secrets.token_hex(4)}"
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(f"host=127.0.0.1 port=5432 user={user} dbname=test",
                                 autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}"
        except psycopg.OperationalError:
            continue
    raise SystemExit("Postgres at 127.0.0.1:5432 (db test) is needed for shared records")


def drop_database(url: str) -> None:
    import psycopg

    user, name = url.split("//")[1].split("@")[0], url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port=5432 user={user} dbname=test",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure_hops(cluster: SimCluster, calls: int) -> dict:
    out = {}
    for side in (0, 512):
        for app in ("hop-same", "hop-cross"):
            r = httpx.get(f"{cluster.base_url}/{app}", params={"calls": calls, "side": side},
                          timeout=600)
            r.raise_for_status()
            lat = [s * 1000 for s in r.json()["latencies_s"]]
            out[f"{app} {side}x{side}x3" if side else f"{app} empty"] = {
                "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2)}
    return out


def recovery_round(cluster: SimCluster, api_key: str, timeout: float) -> dict:
    before = placement(cluster, cluster.serve_status())
    [victim] = before["Generator"]
    lost = sorted(name for name, nodes in before.items() if victim in nodes)
    headers = {"Authorization": f"Bearer {api_key}"}
    stop = threading.Event()
    log: list[tuple[float, int]] = []  # (sent at, status)

    def client(k: int) -> None:
        with httpx.Client(base_url=cluster.base_url, headers=headers) as c:
            n = 0
            while not stop.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    r = c.post("/v1/images/generations", timeout=120, json={
                        "prompt": "a harbour", "size": "64x64", "seed": k * 10000 + n,
                        "steps": 2})
                    log.append((sent, r.status_code))
                    if r.status_code != 200:
                        time.sleep(0.2)
                except httpx.HTTPError:
                    log.append((sent, -1))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(5)
    t_kill = time.monotonic()
    cluster.nodes[victim].kill_raylet()
    survivor = ({"worker_a", "worker_b"} - {victim}).pop()

    def first_success():
        ok = [s for s, code in list(log) if s > t_kill and code == 200]
        return min(ok) if ok else None

    t_first = _wait(first_success, timeout=timeout, interval=0.2, what="a success")

    def healthy():
        s = cluster.serve_status()
        where = placement(cluster, s)
        deps = s["applications"][APP]["deployments"]
        return all(where[n] and set(where[n]) == {survivor} and deps[n]["status"] == "HEALTHY"
                   for n in lost)

    _wait(healthy, timeout=timeout, interval=0.5, what="lost deployments HEALTHY")
    t_healthy = time.monotonic()
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=150)
    after = [code for s, code in log if s > t_kill]
    return {"lost_node": victim, "lost_deployments": lost,
            "first_success_after_kill_s": round(t_first - t_kill, 1),
            "serve_healthy_after_kill_s": round(t_healthy - t_kill, 1),
            "statuses_after_kill": {str(c): after.count(c) for c in sorted(set(after))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--recover-timeout", type=float, default=300)
    ns = ap.parse_args()

    from moto.server import ThreadedMotoServer

    from graphs.cli import free_port
    from models import zoo
    from storage.records import RecordStore
    from storage.s3 import S3AssetStore

    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    bucket = f"ps-cluster-{secrets.token_hex(3)}"
    S3AssetStore(bucket=bucket, endpoint_url=endpoint, region=S3_REGION,
                 access_key_id=S3_KEY, secret_access_key=S3_SECRET, create_bucket=True)
    database_url = postgres_database()
    began = time.monotonic()
    cluster = SimCluster.start()
    stop_on_signal(cluster)
    report: dict = {"machine": machine(), "cluster_start_s": round(time.monotonic() - began)}
    try:
        config = cluster_config(
            http_port=cluster.http_port, data_dir=Path(tempfile.mkdtemp(prefix="psclb")),
            zoo_dir=zoo.default_zoo_dir(), database_url=database_url,
            storage={"asset_store": "s3", "asset_bucket": bucket, "asset_endpoint_url": endpoint,
                     "asset_region": S3_REGION, "asset_access_key_id": S3_KEY,
                     "asset_secret_access_key": S3_SECRET},
            rate_limit_storage=rate_limit_storage(), deployments=SMALL,
            app_args={"router_embeddings": False})
        config["applications"] += [hop_app("hop-same", "worker_a", "worker_a"),
                                   hop_app("hop-cross", "head", "worker_a")]
        began = time.monotonic()
        cluster.deploy(config)
        for app in (APP, "hop-same", "hop-cross"):
            cluster.wait_running(app, timeout=900)
        cluster.wait_routed()
        report["deploy_s"] = round(time.monotonic() - began)
        report["placement"] = placement(cluster, cluster.serve_status())
        report["hop"] = measure_hops(cluster, ns.calls)
        print(json.dumps(report["hop"]), flush=True)
        # the probe apps are done: their replicas would only sit on worker_a's CPUs
        config["applications"] = config["applications"][:1]
        cluster.deploy(config)
        records = RecordStore(database_url)
        api_key = records.create_api_key(project="default", name="bench",
                                         requests_per_minute=1_000_000,
                                         images_per_day=1_000_000)[1]
        records.close()
        report["recovery"] = []
        for n in range(ns.rounds):
            result = recovery_round(cluster, api_key, ns.recover_timeout)
            print(json.dumps(result), flush=True)
            report["recovery"].append(result)
            if n + 1 < ns.rounds:  # a fresh node takes the lost one's place
                lost = result["lost_node"]
                cluster.nodes[lost].stop()
                cluster._start_node(lost, head=False, num_cpus=6, num_gpus=1,
                                    resources={lost: 1})
    finally:
        cluster.stop()
        moto.stop()
        drop_database(database_url)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
