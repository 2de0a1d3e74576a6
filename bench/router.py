"""Router cascade latency on CPU, without the LLM: p50/p99 per stage and the share of messages
each stage decides.

    python bench/router.py [FILE.jsonl ...] [--rounds 3] [--threads 1] [--fake-llm]
                           [--all-embedding]

Messages come from the labelled sets in tests/data/ (router_eval, router_dev, router_holdout)
unless files are given. The embedding model is loaded once (not timed); each message is then
planned `--rounds` times in process (no Ray). `--fake-llm` adds a run through the full async
cascade with an instant fake LLM, to show how many messages would reach the LLM stage and
what the stage costs on top of the model itself. `--all-embedding` sends every message
through the embedding stage too (the worst case: messages the rules never recognise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import machine, pct  # noqa: E402

DEFAULT_FILES = [REPO / "tests" / "data" / f"router_{name}.jsonl"
                 for name in ("eval", "dev", "holdout")]


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values) * 1e3:6.2f} ms  p99 {pct(values, 99) * 1e3:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the encoder")
    parser.add_argument("--fake-llm", action="store_true")
    parser.add_argument("--all-embedding", action="store_true",
                        help="also time a run where the embedding stage sees every message")
    args = parser.parse_args()

    from router.cascade import Cascade
    from router.embeddings import EmbeddingClassifier, SentenceEncoder
    from router.eval import load_cases

    cases = [c for f in (args.files or DEFAULT_FILES) if f.exists() for c in load_cases(f)]
    t = time.perf_counter()
    classifier = EmbeddingClassifier(SentenceEncoder.load(threads=args.threads))
    print(f"machine: {machine()}")
    print(f"embedding model + {len(classifier.texts)} exemplars loaded in "
          f"{time.perf_counter() - t:.1f} s; {len(cases)} messages x {args.rounds} rounds, "
          f"torch threads {args.threads}")
    cascade = Cascade(classifier=classifier)
    for case in cases[:20]:  # warm-up
        cascade.plan_fast(case["message"], case.get("images", 0), case.get("context"))

    totals: list[float] = []
    per_stage: dict[str, list[float]] = {"rules": [], "embedding": []}
    decided: Counter[str] = Counter()
    low = 0
    for _ in range(args.rounds):
        for case in cases:
            plan = cascade.plan_fast(case["message"], case.get("images", 0), case.get("context"))
            totals.append(plan.timings["total"])
            for stage in per_stage:
                if stage in plan.timings:
                    per_stage[stage].append(plan.timings[stage])
            decided[plan.stage] += 1
            low += plan.confidence < cascade.llm_threshold
    n = len(totals)
    mean = statistics.mean(totals) * 1e3
    print(f"cascade without LLM (total)   {_ms(totals)}   mean {mean:.2f} ms")
    print(f"  rules stage (every message) {_ms(per_stage['rules'])}")
    print(f"  embedding stage (ran on {len(per_stage['embedding']) / n:5.1%})  "
          f"{_ms(per_stage['embedding'])}")
    print("decided by: " + ", ".join(f"{stage} {decided[stage] / n:.1%}"
                                     for stage in ("rules", "embedding", "llm")))
    print(f"below the LLM threshold ({cascade.llm_threshold}): {low / n:.1%} of messages")

    if args.all_embedding:
        forced = Cascade(classifier=classifier, rules_threshold=1.01)
        totals = [forced.plan_fast(c["message"], c.get("images", 0), c.get("context"))
                  .timings["total"] for _ in range(args.rounds) for c in cases]
        print(f"every message through the embedding stage: total {_ms(totals)}")

    if args.fake_llm:
        async def fake_llm(request: dict) -> dict:
            draft = json.loads(request["messages"][1]["content"])["draft_plan"]
            content = json.dumps({"steps": draft["steps"], "confidence": 0.9})
            return {"choices": [{"message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}]}

        llm_cascade = Cascade(classifier=classifier, llm=fake_llm)

        async def run() -> tuple[list[float], list[float], Counter[str]]:
            totals, llm_times, stages = [], [], Counter()
            for case in cases:
                plan = await llm_cascade.plan(case["message"], case.get("images", 0),
                                              case.get("context"))
                totals.append(plan.timings["total"])
                if "llm" in plan.timings:
                    llm_times.append(plan.timings["llm"])
                stages[plan.stage] += 1
            return totals, llm_times, stages

        totals, llm_times, stages = asyncio.run(run())
        print(f"with an instant fake LLM: total {_ms(totals)}; LLM stage ran on "
              f"{len(llm_times) / len(cases):.1%} ({_ms(llm_times)}); decided by " +
              ", ".join(f"{s} {stages[s] / len(cases):.1%}" for s in ("rules", "embedding",
                                                                       "llm")))


if __name__ == "__main__":
    main()
