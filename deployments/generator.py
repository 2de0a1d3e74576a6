"""The Stable Diffusion generator deployment.

Concurrent requests are collected by `@serve.batch` (batch size counted in images, not
requests) and the model runs compatible ones in shared pipeline calls. The deployment keeps
a record of the batch sizes it actually ran (`stats`), which the tests and benchmarks read.

Cancellation (client disconnects, request timeouts, cancelled jobs): Serve cancels the
caller's task on this replica (``asyncio.CancelledError`` in `generate`), and the model stops
at the next denoising step. Policy for batches: a request whose caller left before its pipeline
call started is dropped from it; a running pipeline call stops at the next step once every
request in it is gone, and otherwise runs on for the callers still waiting (removing one
request's latents mid-call would change the others' batch). `stats()` counts it all.

LoRA adapters (README "LoRA adapters"): a request's adapter set (sorted ``name:weight``,
`GenerationRequest.adapter_set`) is Serve's multiplexed model id. The ingress sets it on the
handle (``options(multiplexed_model_id=...)``), so Serve routes the request to a replica that
already holds that set; here `@serve.multiplexed` keeps an LRU of `max_adapter_sets` sets per
replica. A set loads its missing adapters with diffusers' `load_lora_weights(adapter_name=)`
(never a pipeline reload); an evicted set releases adapters no cached set uses
(`delete_adapters`), so `set_adapters` stays fast. A pipeline call runs one adapter set only:
`_run_waiting` takes the oldest waiting request and the others with the same set
(`stats()["adapter_batches"]` records each call's set and size).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

from deployments._common import ModelThread, lower_cpu_priority, replica_info
from models import zoo
from models.diffusion import (
    MAX_IMAGES_PER_REQUEST,
    DiffusionModel,
    GenerationRequest,
    check_inputs,
)
from models.lora import LoraRef, parse_adapter_set_id
from models.registry import get_spec, resolve
from telemetry import metrics

logger = logging.getLogger("ray.serve")

# Default GPU share of one replica on GPU profiles (SD 1.5 fp16 needs ~3.5 GB at batch 8,
# 512x512; see serve_config.yaml for the production packing of one GPU).
DEFAULT_NUM_GPUS = 0.4
# Serve batches that may wait for the model at once (see Generator._batched): at least the
# replica's max_ongoing_requests (16 here and in serve_config.yaml), since each holds >= 1.
MAX_WAITING_BATCHES = 64
# After requests overlapped on a replica, its batches keep waiting to fill for this long
# (`Generator._batch_wait`): a closed-loop client set answered together comes back together.
CONCURRENT_MEMORY_S = 2.0


def _images_in(batch: list[Any]) -> int:
    return sum(req.n for req in batch)


@serve.deployment(
    name="Generator",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Generator:
    def __init__(
        self,
        *,
        model: str = "tiny-sd",
        source: str | None = None,
        allow_fallback: bool = False,
        zoo_dir: str | None = None,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.005,
        torch_threads: int | None = None,
        niceness: int = 0,
        max_adapter_sets: int = 4,
        storage: dict[str, Any] | None = None,
        lora_cache_dir: str | None = None,
    ):
        """`torch_threads`: CPU threads for torch (default: Ray's, i.e. the replica's num_cpus;
        more threads than that measured slower here, fighting the other replicas); `niceness`:
        added to the replica's CPU niceness (`deployments._common.lower_cpu_priority`);
        `max_adapter_sets`: LoRA adapter sets cached per replica (Serve's
        max_num_models_per_replica; least recently used evicted); `storage`:
        `storage.config.StorageSettings` fields of the asset store registered LoRAs live in
        (None: the environment's); `lora_cache_dir`: where their files are kept on this node
        (default: ``lora-cache`` beside the zoo folder)."""
        import torch  # heavy: only the replica imports it, not the driver building the graph

        lower_cpu_priority(niceness)
        # every torch call of this replica on one thread, the loading included (ModelThread)
        self._thread = ModelThread("generator-model")

        def load() -> DiffusionModel:
            if torch_threads:
                torch.set_num_threads(torch_threads)  # OpenMP's setting is per thread
            return DiffusionModel.from_name(model, source=source, zoo_dir=zoo_dir,
                                            allow_fallback=allow_fallback)

        self.model = self._thread.call(load)
        self._max_batch_images = max_batch_size  # images per pipeline call
        # Serve refuses a request larger than its batch size ("Size of item is greater than
        # max_batch_size"): its queue must admit the largest request (n=10); a request larger
        # than max_batch_size then runs as several pipeline calls (DiffusionModel.generate).
        self._batched.set_max_batch_size(max(max_batch_size, MAX_IMAGES_PER_REQUEST))
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_wait_s = batch_wait_timeout_s
        self._waits_skipped = 0  # batches started at once (alone and idle: `_batch_wait`)
        self._concurrent_until = float("-inf")  # monotonic: requests overlapped till then
        self._serve_batches: Counter[int] = Counter()  # requests per @serve.batch call
        self._pipeline_batches: Counter[int] = Counter()  # images per pipeline call
        self._images = 0
        self._last_error: str | None = None
        self._last_ok = time.monotonic()  # last successful model call (a request or a probe)
        # Diffusers pipelines are not thread-safe (the scheduler holds per-call state): one
        # model call at a time per replica, batches and health probes alike.
        self._model_lock = asyncio.Lock()
        self._probes = 0
        self._cancelled_requests = 0  # callers that left before their result
        self._dropped_requests = 0  # ... removed from a batch before its pipeline call
        self._interrupted_calls = 0  # pipeline calls stopped early (all their callers gone)
        self._steps_run_cancelled = 0  # steps those calls ran before stopping
        self._steps_skipped = 0  # steps not run because of cancellation
        self._last_interrupt: dict[str, int] | None = None
        self._steps = 0  # denoising steps run by every pipeline call so far (live)
        self._queue = metrics.QueueDepth("Generator")  # requests waiting for a batch
        # (request, cancel event, future) of Serve batches waiting for the model: see _batched
        self._waiting: collections.deque = collections.deque()
        # LoRA: adapter sets cached by Serve's multiplexing (LRU), adapter refcounts by set
        self._zoo_dir = zoo_dir
        self._storage = storage
        self._assets = None  # the asset store of registered LoRAs, built on first use
        self._lora_cache = Path(lora_cache_dir) if lora_cache_dir else \
            Path(zoo_dir or zoo.default_zoo_dir()).expanduser().parent / "lora-cache"
        self._lora_files: dict[str, tuple[str, str]] = {}  # registered: name -> (key, sha256)
        self._lora_fetches = 0
        self._adapter_refs: Counter[str] = Counter()
        self._adapter_loads = 0
        self._adapter_unloads = 0
        self._adapter_load_s = 0.0
        self._set_loads: Counter[str] = Counter()  # adapter set id -> times loaded here
        self._set_requests: Counter[str] = Counter()  # adapter set id -> requests served
        self._adapter_batches: collections.deque = collections.deque(maxlen=256)

        async def load_adapter_set(model_id: str) -> _AdapterSet:
            return await self._load_adapter_set(model_id)

        try:
            self._replica = serve.get_replica_context().replica_id.unique_id
        except RayServeException:  # the class called directly (unit tests)
            self._replica = None
        self._adapter_loader = load_adapter_set  # Serve keeps its LRU cache on this function
        self._adapter_set = serve.multiplexed(max_num_models_per_replica=max_adapter_sets)(
            load_adapter_set)

    # -- LoRA adapter sets (Serve multiplexing) ---------------------------------------------
    async def _load_adapter_set(self, model_id: str) -> _AdapterSet:
        """Serve's multiplexed loader: load the set's adapters not yet on the pipeline."""
        refs = parse_adapter_set_id(model_id)
        async with self._model_lock:  # never while a pipeline call runs
            await self._ensure_adapters(refs)
            for ref in refs:
                self._adapter_refs[ref.name] += 1
            self._set_loads[model_id] += 1
        return _AdapterSet(self, model_id, refs)

    def _adapter_location(self, name: str) -> str:
        """(Blocking: run it in a thread.) The local file of adapter `name`: a registered
        one's from the asset store (fetched once into the node's cache, checked against its
        SHA-256), a built-in one's from the catalogue (tiny ones built in the zoo)."""
        if name in self._lora_files:
            return str(self._fetch_lora(name, *self._lora_files[name]))
        spec = get_spec(name, kind="lora")
        if spec.base != self.model.info.name:
            raise ValueError(f"LoRA {name!r} is for base model {spec.base!r}; this generator "
                             f"serves {self.model.info.name!r}")
        return resolve(spec, zoo_dir=self._zoo_dir, allow_fallback=False,
                       load_check=lambda location: None).location

    def _fetch_lora(self, name: str, key: str, sha256: str) -> Path:
        path = self._lora_cache / f"{sha256}.safetensors"
        if path.is_file():
            return path
        if self._assets is None:
            from storage.config import StorageSettings

            self._assets = StorageSettings(**(self._storage or {})).build_asset_store()
        try:
            data = self._assets.get(key=key)
        except KeyError:  # AssetNotFound
            raise ValueError(f"LoRA {name!r}: its file ({key}) is gone from the asset store; "
                             "register it again") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"LoRA {name!r}: the stored file ({key}) does not match its "
                             "registered SHA-256; register it again")
        self._lora_cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".part", dir=self._lora_cache)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # whole or not at all, for concurrent replicas too
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._lora_fetches += 1
        return path

    def _note_files(self, request) -> None:
        """Remember where the request's registered adapters' files are (the ingress read
        them from the record store)."""
        for name, key, sha256 in getattr(request, "lora_files", ()):
            self._lora_files[name] = (key, sha256)

    async def check_lora(self, data: bytes, filename: str = "lora.safetensors"
                         ) -> dict[str, Any]:
        """Registration check (graphs/loras.py): does this .safetensors LoRA load onto the
        served base model, every layer? Loaded under a scratch name and removed, between
        pipeline calls. `ValueError` saying why not; else ``{"base", "layers", "rank",
        "components"}``."""
        from models.lora import parse_lora_bytes

        state = await asyncio.to_thread(parse_lora_bytes, data, filename)
        async with self._model_lock:
            found = await self._thread.run(self.model.check_adapter, state)
        return {"base": self.model.info.name, **found}

    def _release(self, refs: tuple[LoraRef, ...]) -> None:
        """An evicted set (Serve's LRU): adapters no cached set uses are deleted before the
        next model call (`_reap`, under the model lock)."""
        for ref in refs:
            self._adapter_refs[ref.name] -= 1

    async def _reap(self) -> None:
        """(Holding the model lock.) Delete adapters no cached set or waiting request uses."""
        wanted = {r.name for req, _, _ in self._waiting for r in req.loras}
        for name in self.model.adapters:
            if self._adapter_refs[name] <= 0 and name not in wanted:
                await self._thread.run(self.model.unload_adapter, name)
                self._adapter_refs.pop(name, None)
                self._adapter_unloads += 1

    async def _ensure_adapters(self, loras: tuple[LoraRef, ...]) -> None:
        """(Holding the model lock.) Load adapters of `loras` that are not on the pipeline:
        a set evicted (and reaped) between its request's multiplexed load and its model call
        is loaded again rather than failing the request."""
        for ref in loras:
            loaded = self.model.adapter_location(ref.name)
            if loaded is not None and ref.name not in self._lora_files:
                continue  # built-in: its file never changes
            location = await asyncio.to_thread(self._adapter_location, ref.name)
            if loaded == location:
                continue
            if loaded is not None:  # deleted and registered again with another file
                await self._thread.run(self.model.unload_adapter, ref.name)
                self._adapter_unloads += 1
            self._adapter_load_s += await self._thread.run(
                self.model.load_adapter, ref.name, location)
            self._adapter_loads += 1

    def _cached_sets(self) -> list[str]:
        wrapper = getattr(self._adapter_loader, "__serve_multiplex_wrapper", None)
        return list(wrapper.models) if wrapper is not None else []

    async def _adapters_for(self, request) -> None:
        self._note_files(request)
        if request.loras:
            await self._adapter_set(request.adapter_set)
            self._set_requests[request.adapter_set] += 1

    async def generate(self, request):
        """Generate images for one `models.diffusion.GenerationRequest`."""
        check_inputs(request, self.model.limits)  # fail this request alone, not its batch
        await self._adapters_for(request)  # Serve's LRU of adapter sets (multiplexing)
        cancel = threading.Event()  # set when our caller leaves: read by the model per step
        try:
            with self._queue.waiting():
                self._batch_wait()
                return await self._batched(request, cancel)
        except asyncio.CancelledError:
            cancel.set()
            self._cancelled_requests += 1
            raise

    async def generate_stream(self, request, partial_images: int = 0):
        """Generate one request unbatched, streaming events as they happen:
        ``{"type": "progress", "step", "total"}``, ``{"type": "partial", "index", "images"}``
        (`partial_images` previews decoded from intermediate latents), then
        ``{"type": "result", "result": GenerationResult}``. If the caller stops listening
        (client disconnect, job cancelled), denoising stops at the next step."""
        check_inputs(request, self.model.limits)
        await self._adapters_for(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        async with self._model_lock:
            await self._reap()
            await self._ensure_adapters(request.loras)
            work = asyncio.ensure_future(self._thread.run(
                self.model.generate, [request], cancel=cancel, previews=partial_images,
                on_cancelled=self._record_cancelled,
                on_step=lambda step, total: (self._count_step(step, total), emit(
                    {"type": "progress", "step": step, "total": total})),
                on_preview=lambda index, images: emit(
                    {"type": "partial", "index": index, "images": images}),
            ))
            try:
                while not work.done() or not events.empty():
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait({work, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield getter.result()
                    else:
                        getter.cancel()
                [result] = work.result()
                self._images += len(result.images)
                self._last_ok = time.monotonic()
                yield {"type": "result", "result": result}
            finally:
                # Abandoned (client gone, job cancelled): stop denoising at the next step, and
                # keep the lock until the thread is out of the pipeline.
                if not work.done():
                    cancel.set()
                    self._cancelled_requests += 1
                    await asyncio.wait({work})

    def _batch_wait(self) -> float:
        """Adaptive batch wait, set just before a request joins Serve's batch queue (Serve
        reads it when a batch's first request arrives): none when this request is alone (no
        other request on the replica, the model idle, and none overlapped in the last
        `CONCURRENT_MEMORY_S`), else `batch_wait_timeout_s` to gather the others. At
        concurrency 1 every request used to wait the full timeout for company that never came
        (5 ms of the gateway's added latency); under concurrent load the batches fill as
        before."""
        now = time.monotonic()
        alone = self._queue.depth <= 1 and not self._model_lock.locked() \
            and not self._waiting
        if not alone:
            self._concurrent_until = now + CONCURRENT_MEMORY_S
        wait = 0.0 if alone and now >= self._concurrent_until else self._batch_wait_s
        if wait == 0.0 and self._batch_wait_s > 0:
            self._waits_skipped += 1
        self._batched.set_batch_wait_timeout_s(wait)
        return wait

    # Serve (2.60) takes the next batch off its queue as soon as the previous one has been
    # handed over, not when the model is free: under load the model would run many small
    # batches one after another (measured: mean batch 2-3 at 8 waiting clients). So every
    # batch Serve forms comes in here at once (one slot per request the replica may hold),
    # waits for the model, and whichever gets the model runs all the waiting requests,
    # oldest first, max_batch_size images per pipeline call (BENCHMARKS.md, "Batching").
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, batch_size_fn=_images_in,
                 max_concurrent_batches=MAX_WAITING_BATCHES)
    async def _batched(self, requests: list, cancels: list) -> list:
        """`cancels`: one event per request, set when its caller left (see `generate`). The
        result for a cancelled request is None; Serve drops it (its caller is gone)."""
        self._serve_batches[len(requests)] += 1
        loop = asyncio.get_running_loop()
        mine = [(req, cancel, loop.create_future()) for req, cancel in zip(requests, cancels,
                                                                             strict=True)]
        self._waiting.extend(mine)
        try:
            while not all(f.done() for _, _, f in mine):
                async with self._model_lock:
                    if not all(f.done() for _, _, f in mine):
                        await self._run_waiting()
        finally:
            for item in mine:  # left before its turn (cancelled): nobody runs it for us
                if item in self._waiting:
                    self._waiting.remove(item)
        errors = [f.exception() for _, _, f in mine if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for _, _, f in mine]

    async def _run_waiting(self) -> None:
        """(Holding the model lock.) One pipeline call on the oldest waiting requests, up to
        max_batch_size images, all with the oldest one's LoRA adapter set; their futures get
        the results (or the error)."""
        await self._reap()
        if not self._waiting:
            return
        adapter_set = self._waiting[0][0].adapter_set
        chunk, images = [], 0
        for item in list(self._waiting):
            if item[0].adapter_set != adapter_set:
                continue  # another adapter set: a later call
            if chunk and images + item[0].n > self._max_batch_images:
                break
            chunk.append(item)
            images += item[0].n
        for item in chunk:
            self._waiting.remove(item)
        self._adapter_batches.append({"adapter_set": adapter_set, "requests": len(chunk),
                                      "sets": sorted({req.adapter_set for req, _, _ in chunk})})
        for req, _, _ in chunk:
            self._note_files(req)
        try:
            await self._ensure_adapters(chunk[0][0].loras)
        except (ValueError, OSError) as exc:
            for _, _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        metrics.record_batch("Generator", images)
        started = time.perf_counter()
        work = asyncio.ensure_future(self._thread.run(
            self.model.generate,
            [req for req, _, _ in chunk],
            max_batch_images=self._max_batch_images,
            on_batch=self._record_pipeline_batch,
            on_step=self._count_step,
            cancel=[cancel for _, cancel, _ in chunk],
            on_cancelled=self._record_cancelled,
        ))
        try:
            await asyncio.wait({work})  # its error, if any, is settled request by request
        except asyncio.CancelledError:
            await asyncio.wait({work})  # keep the lock until the thread is out of the pipeline
            raise
        finally:
            self._settle(chunk, work, started)

    def _settle(self, chunk: list, work: asyncio.Future, started: float) -> None:
        if not work.done():
            return
        exc = work.exception()
        if exc is not None:
            self._last_error = f"{type(exc).__name__}: {exc}"
            for _, _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        self._last_error = None
        self._last_ok = time.monotonic()
        for (_, _, future), res in zip(chunk, work.result(), strict=True):
            if res is not None:
                self._images += len(res.images)
                res.timings["batch_s"] = time.perf_counter() - started
            if not future.done():
                future.set_result(res)

    def _record_pipeline_batch(self, images: int) -> None:
        self._pipeline_batches[images] += 1

    def _count_step(self, _step: int, _total: int) -> None:
        self._steps += 1  # from the pipeline's thread: a plain counter, the GIL keeps it whole

    def _record_cancelled(self, steps_run: int, total: int, images: int) -> None:
        """From the model's thread: a pipeline call stopped early, or a request dropped from
        a batch before its call (`steps_run` 0). Plain counters: the GIL keeps them whole."""
        if steps_run == 0:
            self._dropped_requests += 1
        else:
            self._interrupted_calls += 1
            self._last_interrupt = {"steps_run": steps_run, "total_steps": total,
                                    "images": images}
        self._steps_run_cancelled += steps_run
        self._steps_skipped += max(0, total - steps_run)

    def info(self) -> dict[str, Any]:
        return replica_info(self.model.info, vars(self.model.limits))

    def stats(self) -> dict[str, Any]:
        return {
            "replica": self._replica,
            "serve_batches": dict(self._serve_batches),
            "batch_waits_skipped": self._waits_skipped,
            "pipeline_batches": dict(self._pipeline_batches),
            "images": self._images,
            "health_probes": self._probes,
            "last_error": self._last_error,
            "model_busy": self._model_lock.locked(),  # a model call is running now
            "adapters": {
                "loaded": self.model.adapters,  # LoRA adapters on the pipeline now
                "sets": self._cached_sets(),  # Serve's LRU, least recently used first
                "set_loads": dict(self._set_loads),
                "set_requests": dict(self._set_requests),
                "loads": self._adapter_loads,
                "unloads": self._adapter_unloads,
                "load_s": round(self._adapter_load_s, 4),
                "fetches": self._lora_fetches,  # registered files fetched from the store
            },
            "adapter_batches": list(self._adapter_batches),  # pipeline calls: set + size
            "denoising_steps": self._steps,  # grows during a call, step by step
            "cancelled": {
                "requests": self._cancelled_requests,
                "dropped_before_start": self._dropped_requests,
                "interrupted_calls": self._interrupted_calls,
                "steps_run": self._steps_run_cancelled,
                "steps_skipped": self._steps_skipped,
                "last_interrupt": self._last_interrupt,
            },
        }

    async def check_health(self) -> None:
        """Probe the model with a 1-step, smallest-size generation, unless a request succeeded
        within the last minute (so a busy replica isn't slowed by probes)."""
        if self._last_error is None and time.monotonic() - self._last_ok < 60:
            return
        limits = self.model.limits
        probe = GenerationRequest(prompt="health probe", width=limits.min_side,
                                  height=limits.min_side, steps=1, guidance_scale=0.0, seed=0)
        self._probes += 1
        try:
            async with self._model_lock:
                [result] = await asyncio.wait_for(
                    self._thread.run(self.model.generate, [probe]), timeout=25)
        except Exception as exc:
            raise RuntimeError(f"generator health probe failed: {type(exc).__name__}: {exc}"
                               ) from exc
        if result.images[0].shape != (limits.min_side, limits.min_side, 3):
            raise RuntimeError(f"generator health probe returned {result.images[0].shape}")
        self._last_ok = time.monotonic()
        self._last_error = None


class _AdapterSet:
    """One cached adapter set (a Serve multiplexed "model"). Serve calls `__del__` when its
    LRU evicts the set: the adapters only it used are deleted before the next model call."""

    def __init__(self, owner: Generator, model_id: str, refs: tuple[LoraRef, ...]):
        self.model_id = model_id
        self.refs = refs
        self._owner: Generator | None = owner

    def __del__(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:  # once: Serve's eviction, and later the garbage collector
            owner._release(self.refs)
