"""`python -m router.eval FILE.jsonl`: output format, scoring, input checks, and no Ray."""

from __future__ import annotations

import io
import json
import os
import re
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
    # 4 of 5 sequences right; 6 of 7 listed params matched; no prompt checks listed
    assert lines[-1] == "intent_accuracy=0.8000 params_accuracy=0.8571 prompt_accuracy=1.0000"


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


G = "image_generation"
PROMPT_CASES = [
    # flat form: each term is one check; 3 met, 1 missed ("logos": word boundaries)
    {"message": "generate 2 logos for a bakery called Rise and Shine", "intents": [G],
     "params": {"n": 2, "prompt_contains": ["logo", "RISE AND SHINE", "logos"],
                "prompt_excludes": ["generate"]}},
    # per-step form: step 0's prompt only; accents and case ignored
    {"message": "génère un chat roux sur un canapé puis enlève le fond", "steps": [
        {"intent": G, "params": {"prompt_contains": ["Chat roux", "canape"],
                                 "prompt_excludes": ["fond", "génère"]}},
        {"intent": "background_removal"}]},
    # a step the plan lacks fails its checks (2 missed)
    {"message": "a fox", "steps": [
        {"intent": G}, {"intent": "upscale", "params": {"scale": 2,
                                                        "prompt_excludes": ["fox"]}}]},
]


def test_eval_prompt_checks_flat_and_per_step(tmp_path):
    from router.cascade import Cascade
    from router.eval import evaluate, load_cases

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in PROMPT_CASES),
                    encoding="utf-8")
    cases = load_cases(path)
    assert cases[1]["intents"] == [G, "background_removal"]  # from the steps
    out = io.StringIO()
    scores = evaluate(Cascade(), cases, out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()[:-1]]
    assert rows[0]["prompt_ok"] == {"contains 'logo'": True, "contains 'RISE AND SHINE'": True,
                                    "contains 'logos'": False, "excludes 'generate'": True}
    assert rows[0]["params_ok"] == {"n": True}
    assert rows[1]["prompt_ok"] == {"step0.contains 'Chat roux'": True,
                                    "step0.contains 'canape'": True,
                                    "step0.excludes 'fond'": True,
                                    "step0.excludes 'génère'": True}
    assert rows[2]["intent_ok"] is False
    assert rows[2]["params_ok"] == {"step1.scale": False}
    assert rows[2]["prompt_ok"] == {"step1.excludes 'fox'": False}
    assert scores["prompt_checks"] == 9 and scores["prompt_accuracy"] == 7 / 9
    assert out.getvalue().splitlines()[-1] == (
        "intent_accuracy=0.6667 params_accuracy=0.5000 prompt_accuracy=0.7778")


@pytest.mark.parametrize("line,error", [
    ({"message": "hi", "intents": [G], "colour": 1}, "unknown keys ['colour']"),
    ({"message": "hi", "steps": [{"intent": G, "prompt": "x"}]}, "step 0: unknown keys"),
    ({"message": "hi", "steps": [{"intent": "paint"}]}, "step 0: intent must be one of"),
    ({"message": "hi", "steps": [{"intent": G, "params": {"prompt_has": ["x"]}}]},
     "step 0: unknown params ['prompt_has']"),
    ({"message": "hi", "intents": [G], "params": {"prompt_contains": "cat"}},
     "prompt_contains must be a list of non-empty strings"),
    ({"message": "hi", "intents": ["general"], "steps": [{"intent": G}]},
     "intents ['general'] disagree with steps ['image_generation']"),
    ({"message": "hi", "steps": [{"intent": G}], "params": {"n": 1}},
     "with steps, put params in each step"),
])
def test_eval_rejects_unknown_keys_and_malformed_checks(tmp_path, line, error):
    from router.eval import load_cases

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=re.escape(error)):
        load_cases(path)


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
