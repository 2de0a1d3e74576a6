"""LoRA adapter sets on the Generator: one adapter set per pipeline call (from the batch
record), and under Serve: multiplexed routing to the replica holding a set, LRU eviction."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deployments.generator import Generator
from models import zoo
from models.diffusion import GenerationRequest
from models.lora import LoraRef, adapter_set_id
from tests.conftest import wait_until

WARM, COOL, INK = "tiny-lora-warm", "tiny-lora-cool", "tiny-lora-ink"


def req(loras=(), seed=0):
    return GenerationRequest(prompt="a cat", width=64, height=64, steps=1, seed=seed,
                             loras=tuple(loras))


def test_waiting_requests_with_different_adapter_sets_never_share_a_call(zoo_dir):
    gen = Generator.func_or_class(model="tiny-sd", zoo_dir=str(zoo_dir))
    for name in (WARM, COOL):
        gen.model.load_adapter(name, str(zoo.ensure(name, zoo_dir)))
    handler = Generator.func_or_class._batched.__wrapped__
    sets = [(), [LoraRef(WARM, 1.0)], [LoraRef(COOL, 0.5)], [LoraRef(WARM, 1.0)], (),
            [LoraRef(COOL, 0.5)]]

    async def batches():
        gen._model_lock = asyncio.Lock()  # this test's event loop
        return await asyncio.gather(*(handler(gen, [req(s, i)], [threading.Event()])
                                      for i, s in enumerate(sets)))

    results = asyncio.run(batches())
    assert [r[0].loras for r in results] == [
        [{"name": ref.name, "weight": ref.weight} for ref in s] for s in sets]
    record = gen.stats()["adapter_batches"]
    assert all(len(call["sets"]) == 1 for call in record)  # never mixed in one call
    assert sum(call["requests"] for call in record) == len(sets)
    # the waiting requests of one set ran together once the model was free
    assert len(record) < len(sets)


@pytest.mark.slow
def test_serve_routes_an_adapter_set_to_its_replica_and_evicts_lru(ray_cluster, zoo_dir):
    from ray import serve

    for name in (WARM, COOL, INK):
        zoo.ensure(name, zoo_dir)
    app = Generator.options(num_replicas=2, ray_actor_options={"num_cpus": 0.5}).bind(
        model="tiny-sd", zoo_dir=str(zoo_dir), max_adapter_sets=2)
    handle = serve.run(app, name="lora-test", route_prefix=None)
    try:
        def stats_by_replica() -> dict:
            seen: dict = {}
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                s = handle.stats.remote().result()
                seen[s["replica"]] = s
            assert len(seen) == 2
            return seen

        def routed(model_id: str) -> bool:
            """This handle's router knows a replica holding `model_id` (the replica reports
            its multiplexed ids to Serve's controller, which tells the routers); on a Serve
            without that router attribute, the controller's view."""
            asyncio_router = getattr(getattr(handle, "_router", None), "_asyncio_router", None)
            mapping = getattr(getattr(asyncio_router, "request_router", None),
                              "_multiplexed_model_id_to_replica_ids", None)
            if mapping is not None:
                return bool(mapping.get(model_id))
            import ray
            from ray.serve.context import _get_global_client

            running = ray.get(_get_global_client()._controller._all_running_replicas.remote())
            return any(model_id in (r.multiplexed_model_ids or [])
                       for dep, replicas in running.items() if dep.app_name == "lora-test"
                       for r in replicas)

        x = (LoraRef(WARM, 1.0),)
        x_id = adapter_set_id(x)
        for i in range(6):
            out = handle.options(multiplexed_model_id=x_id).generate.remote(
                req(x, i)).result()
            assert out.loras == [{"name": WARM, "weight": 1.0}]
            if i == 0:  # route the next ones by what the replica reported, not by luck
                wait_until(lambda: routed(x_id), timeout=60, interval=0.1,
                           what=f"a replica to report {x_id} to Serve")
        replicas = stats_by_replica()
        holders = [r for r, s in replicas.items() if x_id in s["adapters"]["set_loads"]]
        assert len(holders) == 1  # loaded once, on one replica...
        holder = replicas[holders[0]]
        assert holder["adapters"]["set_loads"][x_id] == 1
        assert holder["adapters"]["set_requests"][x_id] == 6  # ...which served all six
        other = [s for r, s in replicas.items() if r != holders[0]][0]
        assert x_id not in other["adapters"]["set_requests"]

        # LRU (2 sets per replica): new sets (never-seen ids, so Serve may send each to
        # either replica) until two have landed on the holder; X is then evicted there
        landed = 0
        for i in range(40):
            loras = ((LoraRef(COOL, 0.1 + i / 100),) if i % 2 else (LoraRef(INK, 0.1 + i / 100),))
            ident = adapter_set_id(loras)
            handle.options(multiplexed_model_id=ident).generate.remote(req(loras)).result()
            if ident in stats_by_replica()[holders[0]]["adapters"]["set_loads"]:
                landed += 1
                if landed == 2:
                    break
        assert landed == 2, "no two new sets reached the holder"
        holder = stats_by_replica()[holders[0]]
        assert x_id not in holder["adapters"]["sets"] and len(holder["adapters"]["sets"]) == 2
        assert WARM not in holder["adapters"]["loaded"]  # only X used it: deleted
        assert holder["adapters"]["unloads"] >= 1
    finally:
        serve.delete("lora-test")


def test_registered_loras_are_checked_here_and_fetched_from_the_asset_store_once(
        zoo_dir, tmp_path):
    import hashlib

    from storage.assets import LocalAssetStore
    from tests.lora_files import other_unet_lora, tiny_lora

    data = tiny_lora(zoo_dir, tmp_path / "file", seed=99)
    sha = hashlib.sha256(data).hexdigest()
    key = "default/loras/2026/12/mine-abc.safetensors"
    LocalAssetStore(tmp_path / "assets").put(key=key, data=data,
                                              content_type="application/octet-stream")
    gen = Generator.func_or_class(model="tiny-sd", zoo_dir=str(zoo_dir),
                                  storage={"asset_root": str(tmp_path / "assets")},
                                  lora_cache_dir=str(tmp_path / "cache"))
    handler = Generator.func_or_class._batched.__wrapped__
    mine = (LoraRef("mine", 1.0),)

    def request(seed, files=((("mine", key, sha)),)):
        return GenerationRequest(prompt="a cat", width=64, height=64, steps=1, seed=seed,
                                 loras=mine, lora_files=files)

    async def run():
        gen._model_lock = asyncio.Lock()  # this test's event loop
        checked = await gen.check_lora(data)
        with pytest.raises(ValueError, match="does not fit base model 'tiny-sd'"):
            await gen.check_lora(other_unet_lora(tmp_path / "wrong"))
        first = await handler(gen, [request(1)], [threading.Event()])
        second = await handler(gen, [request(2)], [threading.Event()])
        return checked, first[0], second[0]

    checked, first, second = asyncio.run(run())
    assert checked == {"base": "tiny-sd", "layers": 48, "rank": 4, "components": ["unet"]}
    assert first.loras == second.loras == [{"name": "mine", "weight": 1.0}]
    stats = gen.stats()["adapters"]
    assert stats["fetches"] == 1 and stats["loads"] == 1  # fetched and loaded once
    assert (tmp_path / "cache" / f"{sha}.safetensors").read_bytes() == data
    assert gen.model.adapters == ["mine"]  # the check's scratch adapters are gone

    tampered = GenerationRequest(prompt="a cat", width=64, height=64, steps=1, seed=3,
                                 loras=(LoraRef("other", 1.0),),
                                 lora_files=(("other", key, "0" * 64),))

    async def run_tampered():
        gen._model_lock = asyncio.Lock()
        return await handler(gen, [tampered], [threading.Event()])

    with pytest.raises(ValueError, match="does not match its registered SHA-256"):
        asyncio.run(run_tampered())
