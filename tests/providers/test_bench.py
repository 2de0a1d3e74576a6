"""bench/provider_routing.py runs end to end in its quick mode and prints every row and verdict
(the numbers themselves belong in BENCHMARKS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_providers_bench_quick(redis_url):
    proc = subprocess.run([sys.executable, "bench/provider_routing.py", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "breakers: Redis redis://" in out
    for row in ("local: provider directly", "local: through the router",
                "openai (fake server, HTTP): through the router", "fallback alone",
                "primary down, breaker open", "primary hanging, breaker closed",
                "primary refusing connections, breaker closed"):
        assert re.search(rf"\| {re.escape(row)}[^|]* \| +[\d.]+ ms \| +[\d.]+ ms \|", out), row
    assert re.search(r"router added p50, local: [\d.-]+ ms \(target <= 2 ms: (met|missed)\)",
                     out)
    assert re.search(r"fallback, breaker open: added p50 [\d.-]+ ms over the fallback alone "
                     r"\(target <= 5 ms: (met|missed)\)", out)
    hang = float(re.search(r"primary hanging: added p50 ([\d.]+) s", out).group(1))
    assert 0.2 <= hang < 2.0  # one timeout (0.2 s in quick mode) plus scheduling slack
