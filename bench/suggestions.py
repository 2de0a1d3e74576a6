"""Prompt suggestions: autocomplete latency (prefix + all-MiniLM-L6-v2 neighbours, one torch
thread like the Router replica) in-process, and through the gateway when `--url` is given
(GET /v1/suggestions/autocomplete with an API key). Target (issue #17): < 20 ms p50.

    .venv/bin/python bench/suggestions.py [--requests 200] [--url http://... --key ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, pct  # noqa: E402

QUERIES = ["gold", "sunrise warmth", "kitten", "cinematic", "blurry background", "moody",
           "teal and", "ultra hd", "a castle", "watercol"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--url")
    ap.add_argument("--key", default="")
    ns = ap.parse_args()
    print(f"machine: {machine()}")
    from router.embeddings import SentenceEncoder
    from router.suggestions import SuggestionIndex

    index = SuggestionIndex(SentenceEncoder.load(threads=1))
    for q in QUERIES:
        index.autocomplete(q, 10)
    times = []
    for i in range(ns.requests):
        started = time.perf_counter()
        index.autocomplete(QUERIES[i % len(QUERIES)], 10)
        times.append(time.perf_counter() - started)
    print(f"in-process autocomplete ({ns.requests} calls): p50 {pct(times, 50) * 1e3:.1f} ms, "
          f"p90 {pct(times, 90) * 1e3:.1f} ms, mean {statistics.mean(times) * 1e3:.1f} ms")
    if ns.url:
        import httpx

        with httpx.Client(base_url=ns.url, headers={"Authorization": f"Bearer {ns.key}"},
                          timeout=30) as client:
            times = []
            for i in range(ns.requests):
                started = time.perf_counter()
                client.get("/v1/suggestions/autocomplete",
                           params={"q": QUERIES[i % len(QUERIES)]}).raise_for_status()
                times.append(time.perf_counter() - started)
        print(f"HTTP autocomplete ({ns.requests} calls): p50 {pct(times, 50) * 1e3:.1f} ms, "
              f"p90 {pct(times, 90) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
