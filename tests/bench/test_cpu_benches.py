"""The CPU bench scripts run end to end in their quick modes (`--toy`, `--quick`), so they
can't rot: each starts its own local Ray with the tiny profile, measures a little, and prints
its tables. The timings themselves are not held to targets here (those belong to BENCHMARKS.md
and the full runs on real machines), but every figure must be there and well-formed: each row
the full run fills in is printed, every number parses and is positive where it is a time, a
rate or a memory size, the summary lines agree with the tables they summarise, and each
"met"/"missed" verdict is the one its figure gives. For overload and faults, the outcomes the
issue requires (they are PASS/FAIL, asserted).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(*args: str, timeout: float = 500) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# --- reading the printed figures ----------------------------------------------------------

def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table(out: str, first: str) -> tuple[list[str], list[list[str]]]:
    """The markdown table whose header row starts with ``| first |``: its header cells and
    its rows' cells; every row has as many cells as the header."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {first} |")]
    assert len(starts) == 1, f"one table headed {first!r} expected:\n{out}"
    header = cells(lines[starts[0]])
    assert re.fullmatch(r"\|(---\|)+", lines[starts[0] + 1]), lines[starts[0] + 1]
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
        assert len(rows[-1]) == len(header), (header, line)
    assert rows, f"table {first!r} has no rows"
    return header, rows


def number(text: str, unit: str = "", *, sign: bool = False) -> float:
    """The number of a cell such as ``12.5 ms`` (`unit` "ms"), ``4.00``, ``+3 MiB``; fails
    on anything else (``nan``, an error message, an empty cell)."""
    pattern = r"[+-]?\d+(?:\.\d+)?" if sign else r"\d+(?:\.\d+)?"
    m = re.fullmatch(rf"({pattern}){re.escape(unit) if unit else ''}",
                     text.replace(f" {unit}", unit) if unit else text)
    assert m, f"{text!r} is not a number{f' in {unit}' if unit else ''}"
    return float(m.group(1))


def positive(text: str, unit: str = "") -> float:
    value = number(text, unit)
    assert value > 0 and math.isfinite(value), text
    return value


def verdict_agrees(verdict: str, printed: float, threshold: float, *, half: float,
                   at_least: bool = True) -> None:
    """The bench's met/missed for a value printed rounded to +-`half` against `threshold`
    (met: >= it; `at_least=False`: <= it). The bench decides on the unrounded value, so a
    printed value within `half` of the threshold (1.50x for a 1.4996 ratio) agrees with
    either verdict."""
    assert verdict in ("met", "missed"), verdict
    if abs(printed - threshold) <= half:
        return
    met = printed >= threshold if at_least else printed <= threshold
    assert verdict == ("met" if met else "missed"), (verdict, printed, threshold)


def assert_ratio(ratio: float, num: float, den: float, *, half: float,
                 ratio_half: float = 0.005) -> None:
    """`ratio` is num / den, all three as printed: num and den rounded to +-`half`, the
    ratio to +-`ratio_half` (2 decimals by default)."""
    low = (num - half) / (den + half) - ratio_half
    high = (num + half) / (den - half) + ratio_half if den > half else math.inf
    assert low <= ratio <= high, (ratio, num, den)


# --- the benches ------------------------------------------------------------------------------

def check_gateway_output(out: str) -> None:
    """bench/gateway.py --toy: the latency table (in-process, plain uvicorn, ours as
    shipped), one rate table per no-model route (plain uvicorn, bare Serve, ours at
    concurrency 1 and 4), the CPU per request of each server's HTTP process, and the targets
    line that summarises them."""
    assert "## latency at concurrency 1" in out and "## GET /v1/styles" in out
    assert "## POST /v1/chat" in out
    header, rows = table(out, "target")
    assert len(header) == 10
    by_target = {row[0]: row for row in rows}
    assert list(by_target) == ["in-process (model + PNG + base64)", "plain uvicorn",
                               "ours (shipped)"]
    for name, row in by_target.items():
        e2e, e2e_p99, model = (positive(c, "ms") for c in row[1:4])
        added, added_p99 = number(row[4], "ms"), number(row[5], "ms")
        assert e2e_p99 >= e2e and added_p99 >= added >= 0, row
        assert model <= e2e, row  # each request's model time is part of its own
        number(row[6], "ms", sign=True)  # p50 minus the in-process p50: either sign
        if name == "ours (shipped)":
            # our added time split into the runner, storing and the rest (HTTP, routing)
            number(row[7], "ms", sign=True)  # the job runner around the model call
            positive(row[8], "ms")  # storing
            positive(row[9], "ms")  # outside the runner
        else:
            assert row[7:] == ["-", "-", "-"], row  # no job runner there

    rate: dict[tuple[str, str], float] = {}
    for route in ("styles", "chat"):
        header, rows = table(out, f"concurrency ({route})")
        targets = ["plain uvicorn", "bare Serve", "ours (shipped)"]
        assert header == [f"concurrency ({route})"] + [
            c for t in targets for c in (f"{t} req/s", "p50", "p99")]
        assert [row[0] for row in rows] == ["1", "4"]
        for i, target in enumerate(targets):
            col = 1 + 3 * i
            # "123", not "123 (4 errors)": every request (with the key, for ours) answered 200
            values = [positive(row[col]) for row in rows]
            for row in rows:
                assert positive(row[col + 2], "ms") >= positive(row[col + 1], "ms"), row
            rate[(route, target)] = values[-1]  # the highest concurrency

    # the CPU each server's HTTP process spent per request, and the bare / ours ratio
    header, rows = table(out, "route")
    assert header == ["route", *targets, "bare Serve / ours (shipped)"]
    assert [row[0] for row in rows] == ["styles", "chat"]
    for row in rows:
        plain, bare_us, ours_us = (positive(c, "us") for c in row[1:4])
        assert_ratio(number(row[4], "x"), bare_us, ours_us, half=0.5)

    m = re.search(r"^ours \(shipped\): GET /v1/styles (\d+) req/s \(target >= 1000: (\w+)\); "
                  r"([\d.]+)x bare Serve (\d+) req/s \(target >= 0.8: (\w+)\); POST /v1/chat "
                  r"(\d+) req/s \(target >= 600: (\w+)\); added p50 ([\d.]+) ms \(target <= 15 "
                  r"ms: (\w+)\); plain uvicorn (\d+) req/s$", out, re.M)
    assert m, out
    styles, bare, chat = float(m.group(1)), float(m.group(4)), float(m.group(6))
    assert styles == rate[("styles", "ours (shipped)")]
    assert bare == rate[("styles", "bare Serve")]
    assert chat == rate[("chat", "ours (shipped)")]
    assert float(m.group(10)) == rate[("styles", "plain uvicorn")]
    verdict_agrees(m.group(2), styles, 1000, half=0.5)
    assert_ratio(float(m.group(3)), styles, bare, half=0.5)
    verdict_agrees(m.group(5), float(m.group(3)), 0.8, half=0.005)
    verdict_agrees(m.group(7), chat, 600, half=0.5)
    assert float(m.group(8)) == number(by_target["ours (shipped)"][4], "ms")  # the table's
    verdict_agrees(m.group(9), float(m.group(8)), 15, half=0.05, at_least=False)


@pytest.mark.slow
@pytest.mark.bench
def test_gateway_bench_toy(zoo_dir):
    check_gateway_output(run_bench("bench/gateway.py", "--toy"))


def check_batching_output(out: str) -> None:
    """bench/batching.py --toy: off and on at concurrency 1 and 4; off runs one request per
    model call; on never batches more requests than there are clients; the ratios, the
    target line and the recommendation agree with the table."""
    header, rows = table(out, "concurrency")
    assert header == ["concurrency", "off images/s", "off p50", "off batches",
                      "on images/s", "on p50", "on batches", "on / off"]
    assert [row[0] for row in rows] == ["1", "4"]
    ratio_at: dict[int, str] = {}
    rate_on: dict[int, str] = {}
    for row in rows:
        conc = int(row[0])
        rates = {}
        for name, i in (("off", 1), ("on", 4)):
            rates[name] = positive(row[i])
            m = re.fullmatch(r"(\d+) ms \(p99 (\d+)\)", row[i + 1])
            assert m and 0 < int(m.group(1)) <= int(m.group(2)), row
            m = re.fullmatch(r"mean (\d+\.\d), max (\d+)", row[i + 2])
            assert m, row
            mean, biggest = float(m.group(1)), int(m.group(2))
            assert 1.0 <= mean <= biggest <= conc, row  # closed loop: at most conc at once
            if name == "off":
                assert (mean, biggest) == (1.0, 1), row  # one request per model call
        assert row[7].endswith("x"), row
        assert_ratio(number(row[7].removesuffix("x")), rates["on"], rates["off"], half=0.005)
        ratio_at[conc], rate_on[conc] = row[7], row[4]
    m = re.search(r"^on: ([\d.]+x) at concurrency 4 \((\w+)\)$", out, re.M)
    assert m, out
    assert m.group(1) == ratio_at[4]
    verdict_agrees(m.group(2), float(m.group(1).removesuffix("x")), 1.5, half=0.005)
    assert f"(on: {rate_on[4]} images/s at 4)" in out  # the recommendation's figure


@pytest.mark.slow
@pytest.mark.bench
def test_batching_bench_toy(zoo_dir):
    check_batching_output(run_bench("bench/batching.py", "--toy"))


def check_scaling_output(out: str) -> None:
    """bench/scaling.py --toy: every deployment at 64² and 128² answered, with its latency,
    model time and memory; the peaks only grow and the summary lines agree."""
    header, rows = table(out, "deployment")
    assert len(header) == 8
    assert [(row[0], row[1]) for row in rows] == [
        (dep, f"{size}²") for dep in ("matting", "upscaler", "faceswap", "generator")
        for size in (64, 128)]
    peaks: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    for row in rows:
        latencies.setdefault(row[0], []).append(positive(row[2], "ms"))
        positive(row[3], "ms")  # the replica's own model time, from the response metadata
        rss, peak = positive(row[4], "MiB"), positive(row[5], "MiB")
        assert peak >= rss, row  # VmHWM >= VmRSS
        growth = number(row[6], "MiB", sign=True)
        positive(row[7], "MiB")
        previous = peaks.setdefault(row[0], [])
        # the peak of the replica so far: the first size adds +0, the next what it added
        expected = peak - previous[-1] if previous else 0.0
        assert growth >= 0 and abs(growth - expected) <= 1, (row, previous)
        previous.append(peak)
    for dep, (small, big) in peaks.items():
        m = re.search(rf"^{dep}: 64² -> 128² \(4x pixels\): latency x([\d.]+), replica peak "
                      rf"\+(\d+) MiB$", out, re.M)
        assert m, (dep, out)
        assert_ratio(float(m.group(1)), latencies[dep][1], latencies[dep][0], half=0.5,
                     ratio_half=0.05)
        assert abs(int(m.group(2)) - (big - small)) <= 1, m.group(0)


@pytest.mark.slow
@pytest.mark.bench
def test_scaling_bench_toy(zoo_dir):
    check_scaling_output(run_bench("bench/scaling.py", "--toy"))


@pytest.mark.slow
@pytest.mark.bench
def test_matting_bench_toy(zoo_dir):
    pytest.importorskip("asyncer", reason="rembg's server needs the bench extra")
    check_matting_output(run_bench("bench/matting.py", "--toy"))


def check_matting_output(out: str) -> None:
    """bench/matting.py --toy: ours (as shipped, JSON and image-bytes answers) and rembg's
    server at concurrency 1 and 4, each cell a positive figure, the ratios those of the
    figures, the image-bytes answer smaller than the JSON one, the target lines the table's."""
    header, rows = table(out, "concurrency")
    assert header == ["concurrency", "our answer", "ours images/s", "rembg images/s", "ratio",
                      "ours p50 / p99", "rembg p50 / p99", "ours CPU per image",
                      "rembg CPU per image", "CPU ratio rembg/ours", "answer kB ours / rembg"]
    assert [(row[0], row[1]) for row in rows] == [
        ("1", "JSON (base64)"), ("1", "image bytes"), ("4", "JSON (base64)"),
        ("4", "image bytes")]
    ratio_at, kb = {}, {}
    for row in rows:
        ours, rembg = positive(row[2]), positive(row[3])
        assert_ratio(number(row[4].removesuffix("x")), ours, rembg, half=0.05)
        assert row[4].endswith("x") and row[9].endswith("x"), row
        for c in row[5:7]:
            m = re.fullmatch(r"(\d+) / (\d+) ms", c)
            assert m and 0 < int(m.group(1)) <= int(m.group(2)), row
        ours_cpu, rembg_cpu = positive(row[7], "ms"), positive(row[8], "ms")
        assert_ratio(number(row[9].removesuffix("x")), rembg_cpu, ours_cpu, half=0.5)
        m = re.fullmatch(r"([\d.]+) / ([\d.]+)", row[10])
        assert m, row
        kb[row[1]] = float(m.group(1))
        ratio_at[(row[1], row[0])] = row[4]
    # base64 in JSON is ~4/3 of the PNG; the bytes answer is the PNG itself
    assert kb["image bytes"] < kb["JSON (base64)"] * 0.8, kb
    assert re.search(r"^CPU per image by process \(ours, JSON answers\), median of the rounds: "
                     r"concurrency 1: .+ \d+ ms; concurrency 4: .+ \d+ ms$", out, re.M), out
    for mode in ("JSON (base64)", "image bytes"):
        m = re.search(rf"^## target \({re.escape(mode)}\): ours >= 1.5x rembg's images/s at "
                      r"concurrency 16: ([\d.]+x) at concurrency 4 \((\w+)\)$", out, re.M)
        assert m and m.group(1) == ratio_at[(mode, "4")], out
        verdict_agrees(m.group(2), float(m.group(1).removesuffix("x")), 1.5, half=0.005)


@pytest.mark.slow
@pytest.mark.bench
def test_overload_quick_sheds_with_429_and_503_only(redis_url, zoo_dir, tmp_path):
    """bench/overload.py --quick: the production graph (tiny models) behind HAProxy (the
    `photostudio serve` default) driven at 10x its measured capacity for a few seconds: every
    request ends in 200, 429 or 503 (the last two with the error envelope and Retry-After),
    none hangs, no 500/504, no job left running. At 5x its capacity, not the full run's 10x:
    on a 2-core CI machine 10x of the tool route is past the front door's own request rate
    (BENCHMARKS.md, "Overload and faults"), which this smoke test is not about."""
    out = tmp_path / "overload.json"
    stdout = run_bench("bench/overload.py", "--quick", "--haproxy", "--factor", "5",
                       "--json", str(out), timeout=900)
    check_overload_output(stdout, json.loads(out.read_text()), factor=5)


def check_overload_output(stdout: str, result: dict, *, factor: float) -> None:
    passed(stdout)
    assert "no job left running" in stdout.splitlines()
    summary = result["summary"]
    assert result["failures"] == 0 and summary["failures"] == 0, summary
    assert set(summary["by_status"]) <= {"200", "429", "503"}, summary["by_status"]
    assert summary["by_status"].get("200", 0) > 0, summary["by_status"]
    # the 10/min key went over its limit: its excess came back as 429
    assert summary["by_status"].get("429", 0) > 0, summary["by_status"]
    # the figures: the capacity measured on both routes, the overload factor x it, every
    # request counted once, and the latencies of what was answered
    assert set(result["capacity_rps"]) == set(result["rate_rps"]) == {"generation", "tool"}
    for route, capacity in result["capacity_rps"].items():
        assert capacity > 0 and math.isfinite(capacity), result["capacity_rps"]
        assert result["rate_rps"][route] == pytest.approx(factor * capacity)
    assert set(summary["by_route"]) == {"generation", "tool"}, summary["by_route"]
    assert all(counts.get("200", 0) > 0 for counts in summary["by_route"].values()), \
        summary["by_route"]
    assert summary["requests"] == sum(summary["by_status"].values()) == sum(
        n for counts in summary["by_route"].values() for n in counts.values())
    assert f"sent {summary['requests']} requests in " in stdout
    assert f"429s: {summary['by_status']['429']} from the 10/min key, 0 from the main key" \
        in stdout
    assert 0 < summary["accepted_p50_s"] <= summary["accepted_p99_s"] <= \
        summary["accepted_max_s"], summary
    assert 0 < summary["accepted_job_p50_s"] <= summary["accepted_job_p99_s"], summary
    assert 0 < summary["shed_p99_s"] < summary["accepted_max_s"], summary  # shed at once
    assert 0 < result["probe_p99_s"] and math.isfinite(result["probe_p99_s"]), result


@pytest.mark.slow
@pytest.mark.bench
def test_faults_quick_nothing_lost_and_recovers(redis_url, zoo_dir, tmp_path):
    """bench/faults.py --quick: under steady load on the production graph (2 Ingress
    replicas), a killed Generator replica and a killed Ingress replica: every async job ends
    `succeeded` or `failed` with a reason (none left running), every recorded asset decodes,
    and the service recovers (the script prints the recovery times)."""
    out = tmp_path / "faults.json"
    stdout = run_bench("bench/faults.py", "--quick", "--json", str(out), timeout=1200)
    check_faults_output(stdout, json.loads(out.read_text()), burst=3)


def check_faults_output(stdout: str, result: dict, *, burst: int) -> None:
    passed(stdout)
    assert result["failures"] == [] and result["broken_assets"] == [], result
    assert sum(result["jobs"].values()) > 0, result  # some async jobs were accepted
    assert set(result["jobs"]) <= {"succeeded", "failed"}, result["jobs"]
    assert f"async jobs: {sum(result['jobs'].values())} accepted: " in stdout
    assert result["assets"] > 0, result  # what succeeded was stored (and decodes)
    lines = stdout.splitlines()
    for deployment in ("Generator", "Ingress"):
        recovery = result["recovery"][deployment]
        first, healthy = recovery["first_success_s"], recovery["healthy_s"]
        for seconds in (first, healthy):
            assert seconds is not None and 0 <= seconds < 180, recovery  # --recover-timeout
        assert (f"RECOVERY {deployment}: first success {first:.1f}s, HEALTHY {healthy:.1f}s "
                "after the kill") in lines
        # the jobs started just before the kill all ended, and none is left open
        in_flight = recovery["jobs_in_flight_at_kill"]
        assert set(in_flight) <= {"succeeded", "failed"}, in_flight
        assert sum(in_flight.values()) == burst, in_flight


def passed(stdout: str) -> None:
    """The bench's own verdict: its PASS line, and none of its FAIL lines."""
    lines = stdout.splitlines()
    assert "PASS" in lines and not [line for line in lines if line.startswith("FAIL")], \
        stdout[-3000:]


def test_ingress_app_bench_in_process():
    """bench/ingress_app.py (no Ray): the real Ingress app (auth on, records) and the bare
    reference answered every request with 200 (the script checks), each route's difference
    is ours minus bare, and the chat without its session write costs less than with it."""
    out = run_bench("bench/ingress_app.py", "--requests", "40", "--rounds", "1", timeout=240)
    header, rows = table(out, "route")
    assert header == ["route", "bare app", "ours", "ours - bare"]
    assert [row[0] for row in rows] == ["styles", "chat"]
    for row in rows:
        bare, ours = positive(row[1], "us"), positive(row[2], "us")
        assert abs(number(row[3], "us", sign=True) - (ours - bare)) <= 1
    chat = positive(rows[1][2], "us")
    line = next(x for x in out.splitlines() if x.startswith("chat without its session write"))
    no_write = positive(line.split(": ")[1].split(";")[0], "us")
    assert no_write < chat


def test_middleware_bench_in_process():
    """bench/middleware.py (no Ray): bare and the one layer (`RequestPath`) each answered
    every request (the script checks the statuses) and their ratios to bare agree with
    their times."""
    out = run_bench("bench/middleware.py", "--requests", "100", "--rounds", "1", timeout=120)
    header, rows = table(out, "app")
    assert header == ["app", "us/request (median)", "req/s (one core)", "x bare"]
    assert [row[0] for row in rows] == ["bare", "one layer"]
    bare = positive(rows[0][1])
    assert rows[0][3] == "1.00"
    for row in rows:
        us = positive(row[1])
        assert_ratio(number(row[3]), us, bare, half=0.5)
        assert_ratio(positive(row[2].replace(",", "")), 1e6, us, half=0.5, ratio_half=1)
