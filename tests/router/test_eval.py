"""`python -m router.eval FILE.jsonl`: output format, scoring, input checks, and no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = [
    {"message": "generate a red sneaker and remove the background", "images": 0,
     "intents": ["image_generation", "background_removal"]},
    {"message": "upscale it 4x", "images": 1, "intents": ["upscale"], "params": {"scale": 4}},
    # wrong on purpose: the label says style transfer, and a seed the message doesn't have
    {"message": "remove the background", "images": 1, "intents": ["style_transfer"],
     "params": {"seed": 3}},
    {"message": "a castle, no people, 16:9, seed 7", "images": 0,
     "intents": ["image_generation"],
     "params": {"width": 1024, "height": 576, "seed": 7, "negative_contains": ["people"]}},
    {"message": "now in watercolor", "images": 0, "intents": ["style_transfer"],
     "params": {"style": "Watercolour"}, "context": {"last_image_id": "img_1"}},
]


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def cases_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CASES) + "\n\n", encoding="utf-8")
    return path


def test_eval_prints_a_plan_per_line_then_the_scores(cases_file):
    proc = _run("-m", "router.eval", str(cases_file), "--no-embeddings")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(CASES) + 1
    rows = [json.loads(line) for line in lines[:-1]]
    assert [r["message"] for r in rows] == [c["message"] for c in CASES]
    assert [r["intent_ok"] for r in rows] == [True, True, False, True, True]
    assert rows[0]["predicted"] == ["image_generation", "background_removal"]
    assert rows[0]["plan"]["steps"][0]["params"]["prompt"] == "a red sneaker"
    assert rows[1]["params_ok"] == {"scale": True}
    assert rows[2]["params_ok"] == {"seed": False}
    assert rows[3]["params_ok"] == {"width": True, "height": True, "seed": True,
                                    "negative_contains": True}
    assert rows[4]["plan"]["steps"][0]["inputs"][0]["source"] == "session"
    # 4 of 5 sequences right; 6 of 7 listed params matched
    assert lines[-1] == "intent_accuracy=0.8000 params_accuracy=0.8571"


def test_eval_errors_only_and_bad_input(cases_file, tmp_path):
    proc = _run("-m", "router.eval", str(cases_file), "--no-embeddings", "--errors")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["message"] == "remove the background"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message": "hi", "intents": ["teleport"]}\n')
    proc = _run("-m", "router.eval", str(bad), "--no-embeddings")
    assert proc.returncode == 2 and "bad.jsonl:1: intents must be a non-empty list" in proc.stderr
    bad.write_text('{"message": "hi", "intents": ["general"], "params": {"colour": 1}}\n')
    proc = _run("-m", "router.eval", str(bad), "--no-embeddings")
    assert proc.returncode == 2 and "unknown params ['colour']" in proc.stderr
    bad.write_text('{"message": "hi", "intents": ["general"], "context": {"last": 1}}\n')
    proc = _run("-m", "router.eval", str(bad), "--no-embeddings")
    assert proc.returncode == 2 and "bad.jsonl:1: context:" in proc.stderr


RUN_AND_LIST_MODULES = """
import runpy, sys
sys.argv = ["router.eval", sys.argv[1]]
try:
    runpy.run_module("router.eval", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert not exc.code, exc.code
print("MODULES", " ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.slow  # a subprocess that loads the embedding model
def test_eval_with_embeddings_never_imports_ray(cases_file):
    proc = _run("-c", RUN_AND_LIST_MODULES, str(cases_file))
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = set(proc.stderr.split("MODULES", 1)[1].split())
    assert "sentence_transformers" in modules  # the embedding stage really ran
    assert not {m for m in modules if m == "ray" or m.startswith("ray.")}
    assert proc.stdout.strip().splitlines()[-1].startswith("intent_accuracy=0.8000")
