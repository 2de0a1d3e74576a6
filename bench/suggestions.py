"""Prompt suggestions: autocomplete latency (prefix + all-MiniLM-L6-v2 neighbours, one torch
thread like the Router replica) in-process, and through the gateway as shipped (`--http`: the
production graph with tiny models, API keys on, the Serve proxy; or `--url` + `--key` for a
running one). Target (issue #17): < 20 ms p50.

The queries are what a person types: every keystroke prefix of a list of phrases ("s", "su",
"sun", ... "sunrise warmth"), so most are new to the caches. Two passes over them: `cold` (the
first time each query is seen: the Router embeds it unless the prefix matches fill the limit
or it is shorter than 3 letters) and `warm` (the same queries again: the ingress's LRU).

    .venv/bin/python bench/suggestions.py [--http] [--url http://... --key ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, pct  # noqa: E402

PHRASES = ["golden hour portrait", "sunrise warmth", "kitten on a sofa", "cinematic lighting",
           "blurry background", "moody forest", "teal and orange", "ultra hd detail",
           "a castle at night", "watercolor city"]


def typed(phrases: list[str]) -> list[str]:
    """Every keystroke prefix of each phrase, in typing order (duplicates dropped)."""
    out: dict[str, None] = {}
    for phrase in phrases:
        for i in range(1, len(phrase) + 1):
            if phrase[i - 1] != " ":
                out.setdefault(phrase[:i], None)
    return list(out)


def line(name: str, times: list[float]) -> str:
    return (f"{name} ({len(times)} queries): p50 {pct(times, 50) * 1e3:.1f} ms, "
            f"p90 {pct(times, 90) * 1e3:.1f} ms, mean {statistics.mean(times) * 1e3:.1f} ms")


def in_process(queries: list[str]) -> None:
    from router.embeddings import SentenceEncoder
    from router.suggestions import SuggestionIndex

    encoder = SentenceEncoder.load(threads=1)
    for name, cache in (("in-process, no cache", 0), ("in-process, cached index", 4096)):
        index = SuggestionIndex(encoder, cache_size=cache or 1)
        index.autocomplete("warm up the model", 10)
        passes = []
        for _ in range(2):
            times = []
            for q in queries:
                started = time.perf_counter()
                index.autocomplete(q, 10)
                times.append(time.perf_counter() - started)
            passes.append(times)
        print(line(f"{name}, cold pass", passes[0]))
        print(line(f"{name}, warm pass", passes[1]))


def over_http(url: str, key: str, queries: list[str]) -> None:
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        for _ in range(20):  # connections, the Router's first encode
            client.get("/v1/suggestions/autocomplete", params={"q": "warm up the model"})
        for name in ("cold", "warm"):
            times = []
            for q in queries:
                started = time.perf_counter()
                client.get("/v1/suggestions/autocomplete",
                           params={"q": q}).raise_for_status()
                times.append(time.perf_counter() - started)
            print(line(f"HTTP, {name} pass", times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", action="store_true", help="start the production graph and "
                    "measure GET /v1/suggestions/autocomplete through it")
    ap.add_argument("--url")
    ap.add_argument("--key", default="")
    ns = ap.parse_args()
    print(f"machine: {machine()}")
    queries = typed(PHRASES)
    in_process(queries)
    if ns.url:
        over_http(ns.url, ns.key, queries)
    elif ns.http:
        from bench._serving import production_gateway

        with production_gateway(haproxy=True) as gw:  # the request path as shipped
            key = gw.create_key("bench", scopes=["generate"], requests_per_minute=1_000_000)
            over_http(gw.base_url, key, queries)


if __name__ == "__main__":
    main()
