"""The production graph (serve_config.yaml, tiny models) on a simulated 3-node cluster: a
CPU head and two one-GPU workers (tests/cluster/conftest.py). Placement is read from Serve's
own status (each replica's node id), never inferred from timings. The tests run in file
order; the last one loses a worker node for good."""

from __future__ import annotations

import copy
import io
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
from PIL import Image

from bench._cluster import APP, WORKER_RESOURCES, gpu_deployments, gpu_load, placement
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

WORKERS = set(WORKER_RESOURCES)
EPS = 1e-9


def generate(client: httpx.Client, seed: int, *, steps: int = 2, asynchronous: bool = False,
             timeout: float = 120) -> httpx.Response:
    return client.post("/v1/images/generations", params={"async": "true"} if asynchronous
                       else None, timeout=timeout,
                       json={"prompt": f"a lighthouse {seed}", "size": "64x64", "seed": seed,
                             "steps": steps, "response_format": "url"})


def assert_envelope(r: httpx.Response, codes: set[str]) -> None:
    body = r.json()
    assert set(body) == {"error"}, r.text
    assert set(body["error"]) == {"message", "type", "param", "code"}, r.text
    assert body["error"]["code"] in codes, r.text


def test_gpu_replicas_on_workers_ingress_and_controller_on_head(cluster_gateway):
    cluster = cluster_gateway.cluster
    status = cluster.serve_status()
    fractions = gpu_deployments(cluster_gateway.config)
    assert fractions, "serve_config.yaml asks for GPU shares"
    # Serve applied the config's fractions (the builder's code defaults did not win)
    applied = status["applications"][APP]["deployed_app_config"]
    assert gpu_deployments({"applications": [applied]}) == fractions
    where = placement(cluster, status)
    assert set(fractions) <= set(where)
    for name, nodes in where.items():
        assert nodes, f"{name} has no RUNNING replica"
        if name in fractions:
            assert set(nodes) <= WORKERS, (name, nodes)
        else:  # the ingress and the CPU-only deployments stay off the GPU nodes
            assert set(nodes) == {"head"}, (name, nodes)
    assert cluster.node_name(cluster.controller_node_id(status)) == "head"
    load = gpu_load(cluster, status, fractions)
    assert set(load) <= WORKERS and all(v <= 1 + EPS for v in load.values()), load
    # proxy_location: EveryNode — one HTTP proxy per node, all healthy
    proxies = cluster.proxies(status)
    assert {cluster.node_name(n) for n in proxies} == {"head", *WORKERS}, proxies
    assert all(p["status"] == "HEALTHY" for p in proxies.values()), proxies
    for node in cluster.nodes.values():  # each node's proxy routes to the app
        r = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=30)
        assert r.status_code == 200, (node.name, r.text)


def test_generation_across_nodes_stores_in_s3_and_postgres(cluster_gateway, s3_endpoint):
    from storage.records import RecordStore

    with httpx.Client(base_url=cluster_gateway.base_url,
                      headers=cluster_gateway.headers) as client:
        r = generate(client, 1)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["url"].startswith(s3_endpoint)
    image = httpx.get(item["url"], timeout=30)
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    records = RecordStore(cluster_gateway.database_url)
    try:
        job = records.get_job(job_id=r.json()["metadata"]["job_id"], project="default")
        assert job.status == "succeeded" and job.asset_ids == [item["id"]]
    finally:
        records.close()


def test_production_profile_refuses_a_node_local_data_dir_on_the_cluster(cluster_gateway,
                                                                         tmp_path):
    """`serve deploy` of the production profile with the default storage (assets under
    data_dir, SQLite there) on a multi-node cluster fails at build with a message that says
    what to set; the running app is untouched."""
    cluster = cluster_gateway.cluster
    good = cluster_gateway.config
    local = copy.deepcopy(good["applications"][0])
    local.update(name="local-dir", route_prefix="/local-dir")
    for key in ("database_url", "storage"):
        local["args"].pop(key, None)
    local["args"]["data_dir"] = str(tmp_path)
    try:
        cluster.deploy({**good, "applications": [good["applications"][0], local]})

        def failed():
            app = cluster.serve_status()["applications"].get("local-dir")
            return app if app and app["status"] == "DEPLOY_FAILED" else None

        app = wait_until(failed, timeout=180, interval=1, what="local-dir DEPLOY_FAILED")
        assert "multi-node Ray cluster (3 nodes alive)" in app["message"], app["message"]
        assert f"node-local folder {tmp_path}/assets" in app["message"]
        assert "records in SQLite" in app["message"]
    finally:
        cluster.deploy(good)
        wait_until(lambda: "local-dir" not in cluster.serve_status()["applications"],
                   timeout=120, interval=1, what="local-dir removed")
    assert cluster.serve_status()["applications"][APP]["status"] == "RUNNING"


class Load:
    """`concurrency` clients sending generations back to back until stopped (a bounded
    load: never more than `concurrency` requests in flight)."""

    def __init__(self, base_url: str, headers: dict, *, concurrency: int, steps: int):
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.bad: list[str] = []
        self.timeouts = 0
        self._threads = [threading.Thread(target=self._client, args=(i, base_url, headers,
                                                                     steps), daemon=True)
                         for i in range(concurrency)]

    def _client(self, i: int, base_url: str, headers: dict, steps: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    r = generate(client, 1000 * i + n, steps=steps, timeout=300)
                except httpx.TimeoutException:  # a client giving up on a loaded machine
                    self.timeouts += 1
                    continue
                except httpx.HTTPError as exc:
                    self.bad.append(repr(exc))
                    continue
                self.statuses.append(r.status_code)
                if r.status_code != 200:
                    try:  # 504: the ingress's own request timeout, in the envelope
                        assert_envelope(r, {"overloaded", "deployment_unavailable", "timeout"})
                    except AssertionError as exc:
                        self.bad.append(str(exc))
                    time.sleep(0.5)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self._threads:
            t.join(timeout=180)


def test_generator_scales_out_onto_the_worker_with_room_and_back_in(cluster_gateway):
    cluster = cluster_gateway.cluster
    fractions = gpu_deployments(cluster_gateway.config)
    status = cluster.serve_status()
    where = placement(cluster, status)
    assert len(where["Generator"]) == 1
    # which workers have room for one more Generator replica (GPU share and CPUs)
    applied = {d["name"]: d for d in
               status["applications"][APP]["deployed_app_config"]["deployments"]}
    cpus = {name: float(d["ray_actor_options"]["num_cpus"]) for name, d in applied.items()}
    totals = {cluster.node_name(n["node_id"]): n["resources_total"]
              for n in cluster.alive_nodes()}
    load = gpu_load(cluster, status, fractions)
    room = set()
    for worker in WORKERS:
        used_cpu = sum(cpus[name] for name, nodes in where.items() for n in nodes
                       if n == worker)
        if (totals[worker]["GPU"] - load.get(worker, 0) >= fractions["Generator"] - EPS
                and totals[worker]["CPU"] - used_cpu >= cpus["Generator"] - EPS):
            room.add(worker)
    assert room, (load, where)

    # > target_ongoing_requests (8) in flight at the one replica, bounded at 12
    with Load(cluster_gateway.base_url, {**cluster_gateway.headers}, concurrency=12,
              steps=6) as load_run:
        def two_running():
            s = cluster.serve_status()
            return s if len(placement(cluster, s)["Generator"]) == 2 else None

        scaled = wait_until(two_running, timeout=300, interval=1,
                            what="a second Generator replica RUNNING")
    assert not load_run.bad, load_run.bad[:5]
    assert 200 in load_run.statuses
    nodes = placement(cluster, scaled)["Generator"]
    new = list(nodes)
    new.remove(where["Generator"][0])
    assert new[0] in room, (new, room, load)
    after = gpu_load(cluster, scaled, fractions)
    assert all(v <= 1 + EPS for v in after.values()), after

    # the load is gone: back to min_replicas (downscale_delay_s is short in this config)
    wait_until(lambda: len(placement(cluster, cluster.serve_status())["Generator"]) == 1,
               timeout=300, interval=2, what="the Generator back at one replica")


def test_losing_a_worker_node_mid_run(cluster_gateway, s3_endpoint):
    """Kill the raylet of the worker that runs the Generator in the middle of a 30-request
    run (half synchronous, half async jobs). In-flight calls on the lost replicas fail with
    our envelope (503 replica_died / deployment_unavailable, Retry-After), not retried: the
    gateway cannot know how far a generation got, and the client holds the retry decision
    (and its image charge is refunded). Every job ends succeeded or failed with a reason, the
    lost replicas come back on the other worker, and no asset is half-written."""
    from storage.records import RecordStore
    from tests.storage.conftest import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET

    cluster = cluster_gateway.cluster
    fractions = gpu_deployments(cluster_gateway.config)
    before = placement(cluster, cluster.serve_status())
    [victim] = before["Generator"]
    [survivor] = WORKERS - {victim}
    lost = {name for name, nodes in before.items() if victim in nodes}
    started = datetime.now(timezone.utc)
    results: dict[int, httpx.Response | Exception] = {}
    sent_at: dict[int, float] = {}
    killed_at: list[float] = []

    def send(i: int, client: httpx.Client) -> None:
        sent_at[i] = time.monotonic()
        try:
            results[i] = generate(client, 5000 + i, steps=4, asynchronous=bool(i % 2))
        except httpx.HTTPError as exc:
            results[i] = exc

    def client_loop(indices: list[int]) -> None:
        with httpx.Client(base_url=cluster_gateway.base_url,
                          headers=cluster_gateway.headers) as client:
            for i in indices:
                send(i, client)
                if i == 15:  # mid-way: the node goes
                    killed_at.append(time.monotonic())
                    cluster.nodes[victim].kill_raylet()
                time.sleep(0.3)

    threads = [threading.Thread(target=client_loop, args=([i for i in range(30)
                                                           if i % 3 == k],))
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert killed_at, "the run ended before the kill"
    t_kill = killed_at[0]

    # every request answered: 200 / 202, or our envelope's 503 (nothing else, never a 500)
    job_ids = []
    for i, r in sorted(results.items()):
        assert isinstance(r, httpx.Response), (i, r)
        if r.status_code in (200, 202):
            job_ids.append(r.json()["metadata"]["job_id"] if r.status_code == 200
                           else r.json()["id"])
        else:
            assert r.status_code == 503, (i, r.status_code, r.text)
            assert_envelope(r, {"replica_died", "deployment_unavailable", "overloaded"})
            assert "Retry-After" in r.headers

    # recovery: the lost replicas RUNNING again, on the survivor, Serve says HEALTHY
    def recovered():
        s = cluster.serve_status()
        where = placement(cluster, s)
        deps = s["applications"][APP]["deployments"]
        if all(where[name] and set(where[name]) == {survivor} for name in lost) and all(
                deps[name]["status"] == "HEALTHY" for name in lost):
            return s
        return None

    healthy = wait_until(recovered, timeout=300, interval=1, what="replicas back on "
                         f"{survivor}")
    healthy_s = time.monotonic() - t_kill
    assert all(v <= 1 + EPS for v in gpu_load(cluster, healthy, fractions).values())
    # and the survivor serves: the first success after the kill
    with httpx.Client(base_url=cluster_gateway.base_url,
                      headers=cluster_gateway.headers) as client:
        r = generate(client, 9999)
    assert r.status_code == 200, r.text
    first_success = min([sent_at[i] for i, r in results.items()
                         if isinstance(r, httpx.Response) and r.status_code == 200
                         and sent_at[i] > t_kill] or [time.monotonic()]) - t_kill
    print(f"\nlost {victim} ({sorted(lost)}): Serve HEALTHY on {survivor} after "
          f"{healthy_s:.1f} s; first success sent {first_success:.1f} s after the kill")

    # every job of the run ends succeeded or failed (with a reason), none left running
    records = RecordStore(cluster_gateway.database_url)
    try:
        def settled():
            jobs = records.list_jobs(project="default", created_after=started,
                                     limit=100).items
            return jobs if all(j.status in ("succeeded", "failed") for j in jobs) else None

        jobs = wait_until(settled, timeout=300, interval=2, what="every job ended")
        assert {j.id for j in jobs} >= set(job_ids)
        for job in jobs:
            assert job.status == "succeeded" or job.error, job
        # no asset half-written: every recorded asset's object is whole in S3 (decodes at
        # its recorded size), and no object under the prefix lacks its record
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_REGION,
                          aws_access_key_id=S3_ACCESS_KEY_ID, aws_secret_access_key=S3_SECRET)
        prefix = cluster_gateway.config["applications"][0]["args"]["storage"]["asset_prefix"]
        keys = {o["Key"]: o["Size"] for o in s3.list_objects_v2(
            Bucket=cluster_gateway.bucket, Prefix=prefix).get("Contents", [])}
        assets = records.list_assets(project="default", limit=200).items
        recorded = {}
        for asset in assets:
            key = f"{prefix}/{asset.key}"
            recorded[key] = asset
            assert keys.get(key) == asset.size_bytes, (key, keys.get(key), asset.size_bytes)
            body = s3.get_object(Bucket=cluster_gateway.bucket, Key=key)["Body"].read()
            assert Image.open(io.BytesIO(body)).size == (asset.width, asset.height)
        assert set(keys) == set(recorded), set(keys) ^ set(recorded)
        for job in jobs:
            if job.status == "succeeded":
                assert job.asset_ids and all(a in {x.id for x in assets} for a in job.asset_ids)
    finally:
        records.close()
