"""bench/sd_gpu.py and bench/gpu_packing.py at toy size on CPU (no GPU needed).

The scripts are meant for a CUDA machine; here they run with ``--toy`` (tiny widths, same
code paths) as subprocesses, and their JSON and markdown outputs are checked for the rows the
GPU runs will fill in. The fit rule of the packing check is tested directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def yaml_fractions() -> dict[str, float]:
    """GPU deployments' num_gpus; the LLM's share is vLLM's (args.llm_num_gpus), 0.2 as
    planned while the file has none."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    found = {d["name"]: d["ray_actor_options"]["num_gpus"]
             for app in config["applications"] for d in app["deployments"]
             if d.get("ray_actor_options", {}).get("num_gpus", 0) > 0}
    llm = [app["args"]["llm_num_gpus"] for app in config["applications"]
           if (app.get("args") or {}).get("llm_num_gpus")]
    found.setdefault("LLM", llm[0] if llm else 0.2)
    return found


# --- sd_gpu ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_sd_gpu_toy_measures_every_variant_for_both_architectures(tmp_path):
    out = tmp_path / "sd.json"
    proc = run_script("bench/sd_gpu.py", "--toy", "--model", "sd15,sdxl", "--batch-sizes", "1,2",
                      "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["toy"] is True and results["machine"]["device"] == "cpu"
    expected = {("naive", 1), ("ours", 1), ("ours", 2), ("previews", 1), ("tuned", 1),
                ("tuned", 2), ("cudagraphs", 1)}
    for name in ("sd15", "sdxl"):
        res = results["models"][name]
        rows = res["rows"]
        assert {(r["variant"], r["batch"]) for r in rows} == expected
        for r in rows:
            assert r["status"] == "ok", r
            assert r["calls"] == 1 and r["images_per_s"] > 0
            assert r["images_per_s"] == pytest.approx(r["batch"] / r["latency_s"])
            assert r["peak_mem_gb"] is None  # CPU: no CUDA peak
        by_variant = {(r["variant"], r["batch"]): r for r in rows}
        assert by_variant[("naive", 1)]["attention"] == "AttnProcessor"  # classic, no SDPA
        assert by_variant[("ours", 1)]["attention"] == "AttnProcessor2_0"
        assert by_variant[("tuned", 2)]["attention"] == "FusedAttnProcessor2_0"
        assert by_variant[("tuned", 1)]["compiled"] == "eager"
        summary = res["summary"]
        for variant in ("ours", "tuned", "cudagraphs"):
            ratio = summary[variant]["throughput_ratio_vs_naive"]
            best = max(r["images_per_s"] for r in rows if r["variant"] == variant)
            assert ratio == pytest.approx(best / by_variant[("naive", 1)]["images_per_s"])
        assert "added_s_per_image" in summary["previews"]
        # toy sizes are not the published ones, and say so
        assert res["published"] and all(not p["same_size"] for p in res["published"])
        assert all("our_latency_scaled_s" in p for p in res["published"])
    # SDXL really is the SDXL architecture: two text encoders, text_time UNet conditioning
    assert results["models"]["sdxl"]["architecture"]["text_hidden"] == [32, 32]
    assert results["models"]["sdxl"]["architecture"]["cross_attention_dim"] == 64
    table = proc.stdout
    assert "| variant | batch | dtype |" in table and "Ratio vs naive" in table
    for variant in ("naive", "ours", "previews", "tuned", "cudagraphs"):
        assert f"\n| {variant} | 1 |" in table


def test_sd_gpu_refuses_full_size_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_script("bench/sd_gpu.py", "--model", "sd15", timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--toy" in proc.stderr


def test_full_size_configs_have_the_released_parameter_counts():
    import torch

    from bench.sd_gpu import build_pipeline, get_arch

    expected = {  # millions, from the released SD 1.5 / SDXL base checkpoints
        "sd15": {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06},
        "sdxl": {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06,
                 "text_encoder_2": 694.66},
    }
    for name, counts in expected.items():
        pipe = build_pipeline(get_arch(name), device="meta")  # shapes only, no memory
        got = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 2)
               for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        assert got == counts


def test_clip_tokenizer_has_clips_vocabulary_and_special_ids():
    from bench.sd_gpu import clip_tokenizer

    tok = clip_tokenizer()
    ids = tok("a photo of the cat", padding="max_length", max_length=77).input_ids
    assert len(tok) == 49408 and len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407
    assert len(set(ids[1:ids.index(49407)])) > 3  # real tokens, not all unknown


# --- gpu_packing ----------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_packing_toy_reports_every_gpu_deployment(tmp_path, zoo_dir):
    out = tmp_path / "packing.json"
    proc = run_script("bench/gpu_packing.py", "--toy", "--out", str(out), timeout=500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    fractions = yaml_fractions()
    expected = dict(fractions)
    assert {k: v["num_gpus"] for k, v in report["fractions"].items()} == expected
    rows = report["rows"]
    assert {r["deployment"] for r in rows} == set(expected)
    for r in rows:
        assert r["error"] is None, r
        assert r["num_gpus"] == expected[r["deployment"]]
        assert r["footprint_gib"] > 0
        assert r["method"] == "measured: CPU peak RSS growth (toy)"
        assert set(r["fits"]) == {"24 GB", "80 GB"}
        for gpu, fit in r["fits"].items():
            assert fit["share_gib"] == pytest.approx(
                r["num_gpus"] * report["capacities_gib"][gpu])
            assert fit["verdict"] in ("PASS", "FAIL")
    generator = [r for r in rows if r["deployment"] == "Generator"]
    assert len(generator) == 3 and sum(r["typical"] for r in generator) == 1
    assert any("largest single request" in r["scenario"] for r in generator)
    assert "| deployment | num_gpus |" in proc.stdout and "Sum of fractions" in proc.stdout


def test_packing_verdict_is_share_against_footprint_plus_headroom():
    from bench.gpu_packing import check

    fractions = {"Generator": {"num_gpus": 0.4, "source": "t"},
                 "Matting": {"num_gpus": 0.1, "source": "t"},
                 "LLM": {"num_gpus": 0.2, "source": "t"}}
    results = {
        # 0.4 x 20 = 8.0 GiB share; 7.2 x 1.1 = 7.92 fits, 7.3 x 1.1 = 8.03 doesn't
        "Generator": {"method": "m", "scenarios": [
            {"scenario": "ok", "footprint_gib": 7.2, "typical": True},
            {"scenario": "too big", "footprint_gib": 7.3}]},
        "Matting": {"method": "m", "scenarios": [
            {"scenario": "oom", "footprint_gib": 1.0, "error": "OutOfMemoryError: CUDA out of "
             "memory"}]},
        # extras (KV cache, CUDA graphs) count: 3.0 + 0.7 = 3.7 x 1.1 = 4.07 > 0.2 x 20
        "LLM": {"method": "m", "extra_gib": 0.7,
                "scenarios": [{"scenario": "prefill", "footprint_gib": 3.0}]},
    }
    rows = check(fractions, results, {"g": 20.0}, 0.10)
    verdicts = {(r["deployment"], r["scenario"]): r["fits"]["g"]["verdict"] for r in rows}
    assert verdicts == {("Generator", "ok"): "PASS", ("Generator", "too big"): "FAIL",
                        ("Matting", "oom"): "FAIL", ("LLM", "prefill"): "FAIL"}
    llm = next(r for r in rows if r["deployment"] == "LLM")
    assert llm["footprint_gib"] == pytest.approx(3.7)
    assert check(fractions, results, {"g": 20.0}, 0.0)[3]["fits"]["g"]["verdict"] == "PASS"


def test_read_fractions_takes_the_file_and_plans_the_llm(tmp_path):
    from bench.gpu_packing import read_fractions

    config = {"applications": [{"args": {"max_batch_size": 4}, "deployments": [
        {"name": "Ingress", "ray_actor_options": {"num_gpus": 0}},
        {"name": "Generator", "ray_actor_options": {"num_gpus": 0.5}},
        {"name": "Upscaler", "ray_actor_options": {"num_gpus": 0.25}},
    ]}]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    got = read_fractions(path)
    assert {k: v["num_gpus"] for k, v in got.items()} == {"Generator": 0.5, "Upscaler": 0.25,
                                                         "LLM": 0.2}
    assert got["Generator"]["args"]["max_batch_size"] == 4
    assert got["LLM"]["source"].startswith("planned")
    # vLLM's share from the builder args (the LLM adapter deployment itself has no GPU)
    config["applications"][0]["args"]["llm_num_gpus"] = 0.15
    config["applications"][0]["deployments"].append(
        {"name": "LLM", "ray_actor_options": {"num_gpus": 0}})
    path.write_text(yaml.safe_dump(config))
    got = read_fractions(path)
    assert got["LLM"]["num_gpus"] == 0.15 and "llm_num_gpus" in got["LLM"]["source"]
    # a GPU share on the LLM deployment itself wins
    config["applications"][0]["deployments"][-1]["ray_actor_options"]["num_gpus"] = 0.3
    path.write_text(yaml.safe_dump(config))
    got = read_fractions(path)
    assert got["LLM"]["num_gpus"] == 0.3 and got["LLM"]["source"] == "serve.yaml"
