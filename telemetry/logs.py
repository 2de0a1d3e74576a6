"""Structured logs with secret redaction, and the request id they carry.

`RedactingFilter` removes secrets (Authorization headers, API keys, passwords in URLs, AWS
keys) and image payloads (base64 blobs, bytes, arrays) from every record; `JsonFormatter`
writes one JSON object per line with the request id (`request_id_var`, set by the ingress's
``graphs.middleware.RequestPath``, else Serve's own request context). Inside Serve,
``logging_config: {encoding: JSON}`` formats and `install_log_redaction()` adds the filter to
Serve's logger; `configure_logging()` sets up a process outside Serve (CLI, scripts).

The bottom floor of the tree, beside `telemetry.metrics`: no web framework here.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "photostudio_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled: ours (`graphs.middleware.RequestPath`), else
    Serve's own request context (which Serve carries into downstream deployments), else
    None."""
    request_id = request_id_var.get()
    if request_id:
        return request_id
    if "ray.serve" in sys.modules:  # inside Serve; never import Ray only to look
        try:
            from ray.serve.context import _get_serve_request_context

            return _get_serve_request_context().request_id or None
        except (ImportError, AttributeError):  # private API moved: no id rather than a crash
            return None
    return None


REDACTED = "[REDACTED]"
MAX_MESSAGE_CHARS = 4000  # longer messages are cut (with a note of how much)
MAX_FIELD_CHARS = 1000  # per string in `extra` fields, args and containers
MIN_BLOB_CHARS = 200  # a base64-looking run this long is an image (or key) payload

# Header / field names whose values are secrets wherever they appear (dict keys, key=value).
SECRET_KEYS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "api_key", "apikey", "access_token", "refresh_token", "id_token", "token", "secret",
    "client_secret", "password", "passwd", "pwd", "aws_secret_access_key",
    "aws_session_token", "secret_access_key", "session_token", "database_url", "dsn",
    "private_key",
)
_SECRET_KEY_SET = frozenset(k.replace("-", "_") for k in SECRET_KEYS)

_KEY_ALTERNATION = "|".join(sorted({re.escape(k).replace("_", "[-_]").replace(r"\-", "[-_]")
                                    for k in SECRET_KEYS}, key=len, reverse=True))
_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # data URLs carrying images: keep the media type, drop the payload
    (re.compile(r"data:([\w/+.-]+);base64,[A-Za-z0-9+/=_-]+"),
     lambda m: f"data:{m.group(1)};base64,[{len(m.group(0))} chars]"),
    # Authorization schemes, wherever they appear
    (re.compile(r"(?i)\b(bearer|basic|digest|token)(\s+)[A-Za-z0-9._~+/=-]{6,}"),
     lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}"),
    # key=value, key: value, "key": "value" for secret keys (case-insensitive)
    (re.compile(r"(?i)([\"']?\b(?:" + _KEY_ALTERNATION + r")\b[\"']?\s*[:=]\s*)"
                r"(?![\"']?(?:(?:bearer|basic|digest|token)\s+)?\[REDACTED)"
                r"([\"']?)(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;&}\]]+"),
     lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}"),
    # credentials in URLs: scheme://user:password@host → scheme://user:[REDACTED]@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@'\"]*):([^/\s@'\"]+)@"),
     lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@"),
    # AWS access key ids (AKIA..., ASIA... temporary)
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"),
     lambda m: "[REDACTED_AWS_KEY_ID]"),
    # OpenAI / Stripe / GitHub / Slack style tokens
    (re.compile(r"\bpsk_[A-Za-z0-9_-]{8,}"), lambda m: REDACTED),  # our own API keys
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
     lambda m: REDACTED),
    # long base64 / hex runs: image bytes or key material, never useful in a log
    (re.compile(r"[A-Za-z0-9+/_-]{" + str(MIN_BLOB_CHARS) + r",}={0,2}"),
     lambda m: f"[blob {len(m.group(0))} chars]"),
]


def redact_text(text: str, *, limit: int | None = MAX_FIELD_CHARS) -> str:
    """Remove secrets and payloads from a string, then cut it to `limit` characters."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more chars]"
    return text


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEY_SET


def sanitize(value: Any, *, limit: int = MAX_FIELD_CHARS, depth: int = 0) -> Any:
    """A log-safe copy of `value`: secrets redacted (also under secret keys of mappings and
    header lists), bytes and arrays summarized, long strings cut, containers bounded."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value, limit=limit)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # numpy / torch arrays
        return f"<array shape={tuple(shape)} dtype={value.dtype}>"
    if depth >= 4:
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping) or hasattr(value, "items") and callable(value.items):
        try:
            items = list(value.items())
        except Exception:  # an odd mapping-like object: summarize it instead of failing a log
            return f"<{type(value).__name__}>"
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(items):
            if i >= 50:
                out["..."] = f"{len(items) - 50} more"
                break
            key_text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            out[key_text] = REDACTED if _is_secret_key(key_text) else sanitize(
                item, limit=limit, depth=depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = list(value)
        # ASGI-style header pairs: [(b"authorization", b"Bearer x"), ...]
        if all(isinstance(p, (list, tuple)) and len(p) == 2 for p in seq) and seq:
            pairs = []
            for key, item in seq[:50]:
                key_text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
                if isinstance(item, bytes) and not _is_secret_key(key_text):
                    item = item.decode("latin-1")
                pairs.append([key_text, REDACTED if _is_secret_key(key_text)
                              else sanitize(item, limit=limit, depth=depth + 1)])
            return pairs
        out_list = [sanitize(item, limit=limit, depth=depth + 1) for item in seq[:50]]
        if len(seq) > 50:
            out_list.append(f"... {len(seq) - 50} more")
        return out_list
    return redact_text(_safe_repr(value), limit=limit)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<{type(value).__name__}>"


# Attributes every LogRecord has; anything else came from `extra=` or a logging filter.
_STANDARD_ATTRS = frozenset(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message", "asctime", "taskName"}
# Attributes Ray/Serve filters add (ids and names, never secrets): left as they are.
_TRUSTED_ATTRS = frozenset({
    "request_id", "route", "application", "deployment", "replica", "component_name",
    "component_id", "component_type", "worker_id", "node_id", "job_id", "actor_id",
    "task_id", "task_name", "task_func_name", "actor_name", "timestamp_ns",
    "_ray_timestamp_ns", "serve_access_log", "skip_context_filter", "log_to_stderr"})


# Serve's access-log line (``ray.serve._private.logging_utils.access_log_msg``): optional
# client address, method, the matched route's pattern (or the route prefix: never the
# request's own path), status, latency. Nothing in it is a client's text but the method, which
# the HTTP parser takes only from its list of methods.
_SERVE_ACCESS_LINE = re.compile(
    r"(?:[0-9A-Fa-f.:\[\]]+ )?[A-Z]{3,10} [\w/{}.:*-]{0,300} (?:[1-5]\d\d|OK|ERROR|CANCELLED) "
    r"\d{1,9}\.\dms")
_ACCESS_LOG_ATTRS = _STANDARD_ATTRS | _TRUSTED_ATTRS


def _is_serve_access_line(record: logging.LogRecord) -> bool:
    """Whether `record` is Serve's access-log line and carries nothing but Serve's own
    attributes: nothing in it to redact (`RedactingFilter` then leaves it as it is)."""
    return (record.__dict__.get("serve_access_log") is True and not record.args
            and record.exc_info is None and record.stack_info is None
            and type(record.msg) is str and record.__dict__.keys() <= _ACCESS_LOG_ATTRS
            and _SERVE_ACCESS_LINE.fullmatch(record.msg) is not None)


class RedactingFilter(logging.Filter):
    """Removes secrets and payloads from a record in place (message, args, `extra` fields,
    exception text). Add it to a logger or handler; it never drops a record."""

    def __init__(self, *, max_message_chars: int = MAX_MESSAGE_CHARS,
                 max_field_chars: int = MAX_FIELD_CHARS):
        super().__init__()
        self.max_message_chars = max_message_chars
        self.max_field_chars = max_field_chars

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_photostudio_redacted", False):
            return True  # already cleaned (logger filter + handler filter)
        if _is_serve_access_line(record):  # one per request: 1 us instead of 8
            record._photostudio_redacted = True
            return True
        try:
            if record.args:
                args = record.args
                if isinstance(args, Mapping):
                    record.args = sanitize(args, limit=self.max_field_chars)
                else:
                    record.args = tuple(
                        a if isinstance(a, (int, float)) else sanitize(
                            a, limit=self.max_field_chars) for a in args)
            message = record.getMessage()
        except Exception:  # a bad format string: log what there is rather than nothing
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact_text(message, limit=self.max_message_chars)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, limit=None)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, limit=None)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or key in _TRUSTED_ATTRS:
                continue
            record.__dict__[key] = REDACTED if _is_secret_key(key) else sanitize(
                value, limit=self.max_field_chars)
        record._photostudio_redacted = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id``, any `extra` fields, and ``exc_text``. Values are sanitized again here,
    so a handler without `RedactingFilter` still writes no secrets."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage(), limit=MAX_MESSAGE_CHARS),
        }
        request_id = getattr(record, "request_id", None)
        if not request_id or request_id == "-":  # "-": RequestIdFilter found none
            request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_") or key in entry \
                    or key == "request_id":
                continue
            entry[key] = REDACTED if _is_secret_key(key) else sanitize(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_text"] = redact_text(record.exc_text, limit=None)
        if record.stack_info:
            entry["stack_info"] = redact_text(record.stack_info, limit=None)
        return json.dumps(entry, default=_safe_repr, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records (for text formats: ``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


_redaction_filter = RedactingFilter()


def install_log_redaction(*logger_names: str) -> None:
    """Add the redaction filter to loggers (default: Serve's ``ray.serve``, which the
    project's code logs to) and to their current handlers. Idempotent. Call it in a
    deployment's ``__init__``: Serve sets up the replica's handlers before that."""
    for name in logger_names or ("ray.serve",):
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(_redaction_filter)
        for handler in target.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_redaction_filter)


def configure_logging(level: str | int = "INFO", *, json_format: bool = True,
                      stream: Any = None, logger_name: str = "ray.serve") -> logging.Handler:
    """For processes outside Serve's logging (CLI, scripts): one stream handler on
    `logger_name` with redaction and JSON (or ``level [request_id] logger: message``)."""
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                             f"got {level!r}")
        level = resolved
    handler = logging.StreamHandler(stream)
    handler.addFilter(_redaction_filter)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    target = logging.getLogger(logger_name)
    for old in [h for h in target.handlers if getattr(h, "_photostudio", False)]:
        target.removeHandler(old)
    handler._photostudio = True
    target.addHandler(handler)
    target.setLevel(level)
    return handler


__all__ = [
    "JsonFormatter", "RedactingFilter", "RequestIdFilter", "configure_logging",
    "current_request_id", "install_log_redaction", "redact_text", "request_id_var",
    "sanitize",
]
