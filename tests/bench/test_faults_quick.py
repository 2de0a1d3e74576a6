"""bench/faults.py --quick: under steady load on the production graph (tiny models, 2 Ingress
replicas), a killed Generator replica and a killed Ingress replica: every async job ends
`succeeded` or `failed` with a reason (none left running), every recorded asset decodes,
and the service recovers (the script prints the recovery times). Runs as a subprocess: the
script starts its own local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_faults_quick_nothing_lost_and_recovers(redis_url, zoo_dir, tmp_path):
    out = tmp_path / "faults.json"
    proc = subprocess.run([sys.executable, "bench/faults.py", "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["failures"] == [] and result["broken_assets"] == [], result
    assert sum(result["jobs"].values()) > 0, result  # some async jobs were accepted
    assert set(result["jobs"]) <= {"succeeded", "failed"}, result["jobs"]
    for deployment in ("Generator", "Ingress"):
        recovery = result["recovery"][deployment]
        assert recovery["first_success_s"] is not None, recovery
        assert recovery["healthy_s"] is not None, recovery
