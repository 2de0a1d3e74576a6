"""Log redaction and JSON logs (telemetry/logs.py)."""

import io
import json
import logging
import uuid

import pytest

from telemetry import logs

SECRETS = {
    "bearer": "eyJhbGciOiJIUzI1NiJ9.payload.signature",
    "db_password": "pg-Secret-Pw-9",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "openai": "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "api_key": "my-api-key-value-42",
}


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,secret", [
    (f"Authorization: Bearer {SECRETS['bearer']}", SECRETS["bearer"]),
    (f"headers={{'authorization': 'Bearer {SECRETS['bearer']}'}}", SECRETS["bearer"]),
    (f"connecting to postgresql://app:{SECRETS['db_password']}@db.internal:5432/studio",
     SECRETS["db_password"]),
    (f"DATABASE_URL=postgresql+psycopg://app:{SECRETS['db_password']}@h/db",
     SECRETS["db_password"]),
    (f"aws_access_key_id={SECRETS['aws_key_id']}", SECRETS["aws_key_id"]),
    (f"creds {SECRETS['aws_key_id']} in text", SECRETS["aws_key_id"]),
    (f"AWS_SECRET_ACCESS_KEY={SECRETS['aws_secret']}", SECRETS["aws_secret"]),
    (f'{{"aws_secret_access_key": "{SECRETS["aws_secret"]}"}}', SECRETS["aws_secret"]),
    (f"openai key {SECRETS['openai']}", SECRETS["openai"]),
    (f"x-api-key: {SECRETS['api_key']}", SECRETS["api_key"]),
    (f"?api_key={SECRETS['api_key']}&n=1", SECRETS["api_key"]),
    (f'"password": "{SECRETS["db_password"]}"', SECRETS["db_password"]),
    ("gateway key psk_JPxO6CxKFASUyYAgJwBz8KVLg_PMw1n7F2sCAmmeZHQ printed",
     "psk_JPxO6CxKFASUyYAgJwBz8KVLg_PMw1n7F2sCAmmeZHQ"),
])
def test_secrets_are_redacted(text, secret):
    out = logs.redact_text(text)
    assert secret not in out
    assert "REDACTED" in out


def test_redaction_keeps_what_is_useful():
    text = "GET /v1/assets/img_123 200 in 0.25 s; tokens: input_tokens=5 db=postgresql://h/db"
    assert logs.redact_text(text) == text
    assert "app:[REDACTED]@db" in logs.redact_text("postgresql://app:pw@db/x")


def test_image_payloads_and_long_strings_are_cut():
    b64 = "iVBORw0KGgo" + "A" * 50_000
    out = logs.redact_text(f"image data:image/png;base64,{b64} end")
    assert "AAAA" not in out and "data:image/png;base64,[" in out and out.endswith("end")
    assert "AAAA" not in logs.redact_text(f'{{"b64_json": "{b64}"}}')
    long_text = "word " * 2000
    cut = logs.redact_text(long_text, limit=100)
    assert len(cut) < 150 and "more chars" in cut


def test_sanitize_redacts_by_key_and_summarizes_payloads():
    np = pytest.importorskip("numpy")
    value = {
        "headers": [(b"authorization", b"Bearer abc123456"), (b"content-type", b"image/png")],
        "Api-Key": "k-1",
        "nested": {"password": "p", "ok": 1},
        "image": b"\x89PNG" + bytes(5000),
        "array": np.zeros((4, 4, 3), dtype=np.uint8),
    }
    out = logs.sanitize(value)
    assert out["headers"] == [["authorization", "[REDACTED]"], ["content-type", "image/png"]]
    assert out["Api-Key"] == "[REDACTED]" and out["nested"] == {"password": "[REDACTED]",
                                                                 "ok": 1}
    assert out["image"] == "<5004 bytes>"
    assert out["array"] == "<array shape=(4, 4, 3) dtype=uint8>"


# --- JSON logs ------------------------------------------------------------------------------


@pytest.fixture
def json_log():
    stream = io.StringIO()
    name = f"photostudio.test.{uuid.uuid4().hex[:8]}"
    handler = logs.configure_logging("DEBUG", stream=stream, logger_name=name)
    log = logging.getLogger(name)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_request_id_and_no_secrets(json_log):
    log, stream = json_log
    token = logs.request_id_var.set("req-abc")
    try:
        log.info("calling %s with %s", f"postgresql://u:{SECRETS['db_password']}@h/db",
                 f"Bearer {SECRETS['bearer']}",
                 extra={"headers": {"Authorization": f"Bearer {SECRETS['bearer']}"},
                        "upload": b"\x89PNG" * 1000, "b64_json": "QUJD" * 5000,
                        "prompt": "a cat", "api_key": SECRETS["api_key"]})
    finally:
        logs.request_id_var.reset(token)
    log.warning("outside a request")
    first, second = _lines(stream)
    assert first["request_id"] == "req-abc" and first["level"] == "INFO"
    assert first["logger"] == log.name and first["ts"].endswith("Z")
    assert first["message"].startswith("calling postgresql://u:[REDACTED]@h/db with Bearer ")
    assert first["headers"] == {"Authorization": "[REDACTED]"}
    assert first["upload"] == "<4000 bytes>" and first["prompt"] == "a cat"
    assert first["api_key"] == "[REDACTED]" and "QUJDQUJD" not in first["b64_json"]
    raw = stream.getvalue()
    for secret in SECRETS.values():
        assert secret not in raw
    assert "request_id" not in second


def test_exceptions_are_logged_redacted(json_log):
    log, stream = json_log
    try:
        raise ConnectionError(f"could not connect to postgresql://app:{SECRETS['db_password']}"
                              "@db:5432/x")
    except ConnectionError:
        log.exception("database down")
    [entry] = _lines(stream)
    assert "ConnectionError" in entry["exc_text"]
    assert SECRETS["db_password"] not in entry["exc_text"]


def test_redacting_filter_cleans_records_for_any_formatter():
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1,
                               "key %s for %s", (SECRETS["openai"], "x" * 10_000), None)
    record.authorization = "Bearer abcdefghijk"
    assert logs.RedactingFilter().filter(record) is True
    text = record.getMessage()
    assert SECRETS["openai"] not in text and len(text) < 5_000
    assert record.authorization == "[REDACTED]"


def test_install_log_redaction_is_idempotent():
    name = f"photostudio.test.{uuid.uuid4().hex[:8]}"
    target = logging.getLogger(name)
    target.addHandler(logging.NullHandler())
    logs.install_log_redaction(name)
    logs.install_log_redaction(name)
    assert sum(isinstance(f, logs.RedactingFilter) for f in target.filters) == 1
    assert sum(isinstance(f, logs.RedactingFilter)
               for f in target.handlers[0].filters) == 1


def _serve_access_record(message: str, **extra) -> logging.LogRecord:
    """A record shaped as Serve's replica logs its access line (its pre-built context)."""
    record = logging.LogRecord("ray.serve", logging.INFO, "replica.py", 1, message, None, None)
    record.__dict__.update({"serve_access_log": True, "skip_context_filter": True,
                            "route": "/v1/styles", "request_id": "abc", "deployment": "Ingress",
                            "replica": "r1", "application": "default", "job_id": "01",
                            "worker_id": "w", "node_id": "n", "actor_id": "a", **extra})
    return record


@pytest.mark.parametrize("line", [
    "GET /v1/styles 200 1.2ms", "POST /v1/assets/{asset_id} 404 0.4ms", "CALL remove OK 12.3ms",
    "127.0.0.1:5555 GET / 307 0.1ms", "GET /studio/{path:path} 200 3.0ms"])
def test_serves_access_lines_pass_as_they_are(line):
    record = _serve_access_record(line)
    before = dict(record.__dict__)
    assert logs.RedactingFilter().filter(record)
    assert record.getMessage() == line
    assert {k: v for k, v in record.__dict__.items() if k != "_photostudio_redacted"} == before


def test_an_access_line_with_anything_else_is_redacted_in_full():
    key = "psk_" + "a" * 30
    odd = _serve_access_record(f"GET /v1/styles?api_key={key} 200 1.2ms")
    logs.RedactingFilter().filter(odd)
    assert key not in odd.getMessage() and logs.REDACTED in odd.getMessage()
    extra = _serve_access_record("GET /v1/styles 200 1.2ms", authorization=f"Bearer {key}")
    logs.RedactingFilter().filter(extra)
    assert extra.authorization == logs.REDACTED
    not_serves = logging.LogRecord("ray.serve", logging.INFO, "x.py", 1,
                                   f"GET /v1/styles 200 1.2ms token {key}", None, None)
    logs.RedactingFilter().filter(not_serves)
    assert key not in not_serves.getMessage()
