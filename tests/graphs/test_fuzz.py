"""Schema-driven fuzzing of the deployed gateway (production graph, tiny models) with
schemathesis: every operation in its /openapi.json, valid and invalid inputs, over real
HTTP through the Serve proxy.

Asserted for every generated request: no 5xx, the status code is documented for the
operation, the content type and the body match the documented response schema, documented
headers are present. Findings of `negative_data_rejection` (the server accepted input the
schema forbids) are printed, not asserted: they mean the documented schema is stricter
than the server, which the report lists.

Uploads (`format: binary`) are half real images (PNG/JPEG/WebP, 8-64 px, RGB/RGBA/L) and
half random bytes, so valid requests reach the models and invalid ones the decoder.
Cheap on purpose: expensive knobs of *valid* values are clamped (n <= 2, steps <= 2, sizes
<= 64x64) so the tiny models answer in well under a second; no operation is skipped.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.slow

MIN_CASES = 1000
MAX_SIDE = 64  # valid sizes above this are clamped (cost grows with pixels)
CLAMP = {"n": 2, "steps": 2, "partial_images": 1}
# values kept despite CLAMP: the top of the documented range, where the shipped generator's
# batch size (8 images) is crossed. Clamping every n to 2 is why the fuzz never saw n=9/10
# fail with a 500 (issue #13, 3).
UNCLAMPED = {"n": {9, 10}}
REQUEST_TIMEOUT_S = 120


@dataclass
class Finding:
    operation: str
    mode: str
    title: str
    status: int
    message: str
    request: str
    count: int = 1


@dataclass
class Report:
    cases: int = 0
    by_operation: Counter = field(default_factory=Counter)
    op_statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    statuses: Counter = field(default_factory=Counter)
    findings: dict[tuple[str, str, int], Finding] = field(default_factory=dict)
    informational: dict[tuple[str, str, int], Finding] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, target: dict, finding: Finding) -> None:
        key = (finding.operation, finding.title, finding.status)
        if key in target:
            target[key].count += 1
        else:
            target[key] = finding

    def render(self, findings: dict) -> str:
        lines = []
        for f in sorted(findings.values(), key=lambda f: (f.operation, f.title)):
            lines.append(f"- {f.operation} [{f.mode}] {f.title}: HTTP {f.status} x{f.count}\n"
                         f"    {f.message[:600]}\n    reproduce: {f.request[:800]}")
        return "\n".join(lines)


def _clamp_size(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]{1,5})x([0-9]{1,5})", value)
        if match:
            width, height = (int(v) for v in match.groups())
            if width * height > MAX_SIDE * MAX_SIDE and width <= 4096 and height <= 4096 \
                    and width % 8 == 0 and height % 8 == 0:
                return f"{MAX_SIDE}x{MAX_SIDE}"
    return value


def make_cheap(body: Any, *, multipart: bool = False) -> Any:
    """Lower expensive but valid values; leave invalid ones as generated. In a multipart
    form, a null field is left out (a form can't carry null: schemathesis would send the
    text "null", which an int field rejects; omitting is what a client does)."""
    if not isinstance(body, dict):
        return body
    if multipart:
        for name in [k for k, v in body.items() if v is None]:
            del body[name]
    for name, cap in CLAMP.items():
        value = body.get(name)
        if str(value) in {str(v) for v in UNCLAMPED.get(name, ())}:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and cap < value <= 150:
            body[name] = cap
        elif isinstance(value, str) and value.isdigit() and cap < int(value) <= 150:
            body[name] = str(cap)  # multipart fields travel as text
    if "size" in body:
        body["size"] = _clamp_size(body["size"])
    return body


def image_files():
    """Small real images in the formats the API takes, or random bytes."""
    import io

    import numpy as np
    from hypothesis import strategies as st
    from PIL import Image

    @st.composite
    def encoded(draw) -> bytes:
        width, height = (draw(st.sampled_from([8, 16, 24, 32, 48, 64])) for _ in range(2))
        fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
        mode = draw(st.sampled_from(["RGB", "L"] if fmt == "JPEG" else ["RGB", "RGBA", "L"]))
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buffer, fmt)
        return buffer.getvalue()

    return st.one_of(encoded(), st.binary(max_size=512))


@pytest.fixture
def real_images_for_binary_fields():
    from schemathesis.specs.openapi import formats

    previous = formats.STRING_FORMATS.get("binary")
    schemathesis.openapi.format("binary", image_files())
    yield
    if previous is None:
        formats.unregister_string_format("binary")
    else:
        formats.STRING_FORMATS["binary"] = previous
        formats._invalidate_caches()


def complete_spec(spec: dict) -> tuple[dict, list[str]]:
    """What the served spec leaves out and generation needs, added where missing (a no-op
    once the ingress documents it; each addition is listed in the test output):

    - file fields: OpenAPI 3.1 ``contentMediaType`` without ``format: binary``: schemathesis
      then sends short strings instead of files, and no upload ever reaches a model;
    - multipart bodies without ``additionalProperties: false``: the ingress rejects unknown
      form fields (400), so "valid" cases with random extra fields are not valid.
    """
    import copy

    spec = copy.deepcopy(spec)
    added: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and "contentMediaType" in node \
                    and "format" not in node:
                node["format"] = "binary"
                added.append(f"format: binary at {where}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(spec, "#")
    schemas = spec.get("components", {}).get("schemas", {})
    for path, methods in spec.get("paths", {}).items():
        for method, operation in methods.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            body = content.get("multipart/form-data", {}).get("schema")
            if not body:
                continue
            ref = body.get("$ref", "")
            target = schemas.get(ref.rsplit("/", 1)[-1]) if ref else body
            if target is not None and "additionalProperties" not in target:
                target["additionalProperties"] = False
                added.append(f"additionalProperties: false for {method.upper()} {path}")
    return spec, added


def _request_text(case: Any, base_url: str) -> str:
    try:
        return case.as_curl_command(base_url=base_url)
    except Exception as exc:  # a curl rendering problem must not hide the finding
        return f"<{case.method} {case.formatted_path} body={case.body!r:.300}> ({exc})"


def test_every_operation_conforms_to_its_schema(gateway, real_images_for_binary_fields):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.failures import FailureGroup

    asserted = [not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance, response_headers_conformance]
    import requests

    served = requests.get(f"{gateway.base_url}/openapi.json", timeout=30).json()
    spec, added = complete_spec(served)
    schema = schemathesis.openapi.from_dict(spec)
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an operation schemathesis can't load fails here
    assert len(operations) >= 10, [op.label for op in operations]

    report = Report()
    base_url = gateway.base_url
    # Valid and invalid cases for each operation; some operations have a tiny input space
    # (no parameters), so the per-run budget is set for the total to pass MIN_CASES.
    runs = [(op, mode) for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    per_run = math.ceil(2 * MIN_CASES / len(runs))
    started = time.monotonic()
    session = requests.Session()

    def runner(op, mode):
        def run_one(case):
            if isinstance(case.body, dict):  # in place: schemathesis re-checks what it sends
                make_cheap(case.body, multipart="multipart" in (case.media_type or ""))
            response = case.call(base_url=base_url, session=session,
                                 headers=gateway.headers, timeout=REQUEST_TIMEOUT_S)
            report.cases += 1
            report.by_operation[op.label] += 1
            report.statuses[response.status_code] += 1
            report.op_statuses[op.label][response.status_code] += 1
            for checks, target in ((asserted, report.findings),
                                   ([negative_data_rejection], report.informational)):
                if mode == GenerationMode.POSITIVE and target is report.informational:
                    continue
                try:
                    case.validate_response(response, checks=checks)
                except FailureGroup as group:
                    for failure in group.exceptions:
                        report.add(target, Finding(
                            operation=op.label, mode=str(mode.value), title=failure.title,
                            status=response.status_code,
                            message=f"{failure.message} | body: {response.text[:300]!r}",
                            request=_request_text(case, base_url)))

        return run_one

    for op, mode in runs:
        test = settings(
            max_examples=per_run, deadline=None, database=None, derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(case=op.as_strategy(generation_mode=mode))(runner(op, mode)))
        try:
            test()
        except Unsatisfiable:
            pass  # e.g. no invalid input exists for an operation without parameters
        except Exception as exc:  # generation problems are findings about the spec too
            report.errors.append(f"{op.label} [{mode.value}]: {type(exc).__name__}: "
                                 f"{str(exc)[:400]}")

    elapsed = time.monotonic() - started
    summary = (f"{report.cases} cases in {elapsed:.0f} s over {len(operations)} operations; "
               f"statuses {dict(sorted(report.statuses.items()))}")
    print("\n" + summary)
    if added:
        print(f"added to the served spec for generation ({len(added)}):\n  "
              + "\n  ".join(added))
    for label, statuses in report.op_statuses.items():
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    if report.informational:
        print("accepted input the schema forbids (negative_data_rejection):\n"
              + report.render(report.informational))
    if report.errors:
        print("generation errors:\n" + "\n".join(report.errors))
    assert not report.findings, f"{summary}\n{report.render(report.findings)}"
    assert not report.errors, "\n".join(report.errors)
    assert report.cases >= MIN_CASES, summary
    server_errors = sum(n for status, n in report.statuses.items() if status >= 500)
    assert server_errors == 0

