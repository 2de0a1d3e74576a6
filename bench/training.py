"""LoRA training: steps/s of the loop in-process vs through the job system (target: the job
system costs at most 10 %), and a GPU run on an SD1.5-architecture pipeline.

CPU (default): the tiny SD model, a dataset of 4 images at 64², rank 4, batch 2.
- in-process: `models.lora_training.LoraTrainer.step()` in a loop (the same checkpoint
  cadence: `checkpoint()` + `sample()` every `--checkpoint-every` steps, kept in memory);
- job system: the same training as the gateway runs it: dataset and training records
  (SQLite), images in a local asset store, `TrainingQueue` actor → Ray task
  (`graphs/training_worker.run_training`): per-step loss records (throttled), heartbeats,
  checkpoints + samples to the asset store, the adapter checked on a tiny Generator (Serve)
  and registered at the end. Its steady-state
  rate is read from the record store while it runs (steps between 10 % and 90 %).
Both at one torch thread (a training task's `training_torch_threads=1` here).

GPU (`--gpu`): an SD1.5-architecture pipeline built from configs (random weights: no
download), LoRA rank 16, batch 4, 512², mixed precision (bf16 where supported), in-process
steps/s and peak memory.

    .venv/bin/python bench/training.py [--steps 60] [--checkpoint-every 20]
    .venv/bin/python bench/training.py --gpu [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine  # noqa: E402


def examples(n: int = 4, size: int = 64):
    import numpy as np

    from models.lora_training import Example

    rng = np.random.default_rng(0)
    return [Example(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "zqx, a house")
            for _ in range(n)]


def in_process(ns) -> dict:
    import torch

    from models import zoo
    from models.lora_training import LoraTrainer, TrainingConfig

    torch.set_num_threads(ns.threads)
    config = TrainingConfig(steps=ns.steps, rank=4, batch_size=2, resolution=64,
                            learning_rate=1e-3, sample_steps=4)
    trainer = LoraTrainer(zoo.ensure("tiny-sd", None), config, examples())
    trainer.step()  # warm-up (first-call allocations)
    trainer.step_count = 0
    times = []
    started = time.perf_counter()
    while trainer.step_count < ns.steps:
        t = time.perf_counter()
        trainer.step()
        if trainer.step_count % ns.checkpoint_every == 0 and trainer.step_count < ns.steps:
            trainer.checkpoint()
            trainer.sample("zqx")
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - started
    lo, hi = int(0.1 * ns.steps), int(0.9 * ns.steps)
    return {"steps_per_s": (hi - lo) / sum(times[lo:hi]), "total_s": total,
            "median_step_ms": 1000 * statistics.median(times)}


def through_jobs(ns) -> dict:
    import ray

    from graphs.images import encode
    from graphs.training_worker import TrainingJob, training_queue
    from storage.assets import asset_key
    from storage.config import StorageSettings
    from storage.datasets import DatasetRecords, NewDatasetImage
    from storage.records import NewAsset, new_id

    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    storage = {"asset_root": str(tmp / "assets"),
               "database_url": f"sqlite:///{tmp / 'bench.db'}"}
    settings = StorageSettings(**storage)
    records, assets = settings.build_record_store(), settings.build_asset_store()
    data = DatasetRecords(records)
    ds = data.create_dataset(project="default", name="bench")
    new_assets, images = [], []
    for ex in examples():
        blob = encode(ex.image, "png")
        aid = new_id("img")
        key = asset_key(project="default", kind="dataset", asset_id=aid, ext="png")
        assets.put(key=key, data=blob, content_type="image/png")
        new_assets.append(NewAsset(id=aid, job_id=None, kind="dataset", store=assets.name,
                                   key=key, content_type="image/png", size_bytes=len(blob),
                                   width=64, height=64))
        images.append(NewDatasetImage(asset_id=aid, size_bytes=len(blob), width=64,
                                      height=64, caption="a house"))
    data.add_images(dataset_id=ds.id, images=images, assets=new_assets)
    config = {"steps": ns.steps, "rank": 4, "batch_size": 2, "resolution": 64,
              "learning_rate": 1e-3, "sample_steps": 4, "seed": 0}
    tid = data.create_training(project="default", dataset_id=ds.id, name="bench-lora",
                               base_model="tiny-sd", params=config, total_steps=ns.steps)
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    try:
        # the Generator that checks the trained adapter before it is registered (as shipped)
        from ray import serve

        from deployments.generator import Generator

        serve.run(Generator.bind(model="tiny-sd"), name="bench-training", route_prefix=None)
        queue = training_queue(1)
        created = time.perf_counter()
        ray.get(queue.submit.remote(TrainingJob(
            training_id=tid, project="default", storage=storage, base_model="tiny-sd",
            adapter_name="bench-lora", trigger_word="zqx", config=config, dataset_id=ds.id,
            checkpoint_every=ns.checkpoint_every, torch_threads=ns.threads,
            resources={"num_cpus": 1}, generator_app="bench-training")))
        seen: list[tuple[float, int]] = []
        while True:
            job = records.get_job(job_id=tid, project="default")
            row = data.get_training(training_id=tid, project="default")
            seen.append((time.perf_counter(), row.step))
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.05)
        total = time.perf_counter() - created
        if job.status != "succeeded":
            raise SystemExit(f"training {job.status}: {job.error}")
    finally:
        ray.shutdown()
    print(f"registered: {data.get_training(training_id=tid, project='default').adapter}")
    lo, hi = int(0.1 * ns.steps), int(0.9 * ns.steps)
    t_lo = next(t for t, s in seen if s >= lo)
    t_hi = next(t for t, s in seen if s >= hi)
    s_lo = next(s for _, s in seen if s >= lo)
    s_hi = next(s for _, s in seen if s >= hi)
    return {"steps_per_s": (s_hi - s_lo) / (t_hi - t_lo), "total_s": total}


def gpu(ns) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from models.lora_training import LoraTrainer, TrainingConfig
    from models.zoo import _tiny_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # SD 1.5's UNet config (860 M parameters)
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(  # SD's VAE config (8x)
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    tokenizer = _tiny_clip_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77,
                                        vocab_size=max(1000, len(tokenizer))))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    config = TrainingConfig(steps=ns.steps, rank=16, batch_size=4, resolution=512,
                            learning_rate=1e-4, sample_steps=20)
    started = time.perf_counter()
    trainer = LoraTrainer("sd15-architecture", config, examples(8, 512), device="cuda",
                          pipeline=pipe)
    setup = time.perf_counter() - started
    for _ in range(3):
        trainer.step()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(ns.steps):
        t = time.perf_counter()
        loss = trainer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    ckpt = trainer.checkpoint()
    ckpt_s = time.perf_counter() - t
    t = time.perf_counter()
    trainer.sample("zqx")
    torch.cuda.synchronize()
    sample_s = time.perf_counter() - t
    lora_params = sum(p.numel() for p in trainer.params)
    print(f"# {torch.cuda.get_device_name()} | SD1.5-architecture UNet (random weights), "
          f"LoRA rank 16 ({lora_params / 1e6:.2f} M params), batch 4, 512², "
          f"precision {trainer.precision}")
    print(f"setup {setup:.1f} s (build + cache latents/embeddings)")
    print(f"steps/s {1 / statistics.median(times):.2f} (median step "
          f"{1000 * statistics.median(times):.0f} ms, p90 "
          f"{1000 * sorted(times)[int(0.9 * len(times))]:.0f} ms), last loss {loss:.4f}")
    print(f"images/s {4 / statistics.median(times):.1f}; peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"checkpoint {len(ckpt) / 2**20:.1f} MiB in {ckpt_s:.2f} s; sample (20 steps, "
          f"512²) {sample_s:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--checkpoint-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu", action="store_true")
    ns = ap.parse_args()

    import models  # noqa: F401  (torchvision guard for peft)

    if ns.gpu:
        gpu(ns)
        return
    print(f"# {machine()} | tiny-sd, 4 images 64², rank 4, batch 2, {ns.steps} steps, "
          f"checkpoint + sample every {ns.checkpoint_every}, {ns.threads} torch thread(s)")
    inproc = in_process(ns)
    print(f"in-process:  {inproc['steps_per_s']:.2f} steps/s (median step "
          f"{inproc['median_step_ms']:.0f} ms), loop total {inproc['total_s']:.1f} s")
    jobs = through_jobs(ns)
    print(f"job system:  {jobs['steps_per_s']:.2f} steps/s, submit→succeeded "
          f"{jobs['total_s']:.1f} s (worker start, model load, adapter store included)")
    cost = 1 - jobs["steps_per_s"] / inproc["steps_per_s"]
    print(f"job system cost: {100 * cost:.1f} % of steady-state steps/s (target <= 10 %)")


if __name__ == "__main__":
    main()
