"""What the HTTP providers share: an httpx client with timeouts, status → ProviderError
mapping, retries of idempotent reads (tenacity), and checked, size-limited downloads.

Retries: only idempotent reads are retried here (polls, result fetches, downloads: a paid
job already ran, losing its result to one dropped connection would waste it). A submission
is never retried blindly by the provider; the router moves on to the next provider instead,
and the breaker learns.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from providers.base import ProviderError, ProviderImage

if TYPE_CHECKING:
    from providers.base import Provider

T = TypeVar("T")
USER_AGENT = "photostudio-gateway/providers"


def client(provider: Provider, *, headers: dict[str, str] | None = None,
           transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    settings = provider.settings
    timeout = httpx.Timeout(settings.timeout_s, connect=min(settings.connect_timeout_s,
                                                            settings.timeout_s))
    return httpx.AsyncClient(
        base_url=settings.base_url, timeout=timeout, transport=transport,
        headers={"User-Agent": USER_AGENT, **(headers or {})}, follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or invalid."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


def status_error(provider: Provider, response: httpx.Response, message: str | None = None, *,
                 code: str | None = None, param: str | None = None) -> ProviderError:
    """A non-2xx response as a ProviderError: 429 → rate_limited (with Retry-After); 5xx →
    server_error (503 with Retry-After keeps it); 408 → timeout; 401/403 → auth_error and
    404 → not_found (our configuration of that backend: the request may succeed elsewhere);
    other 4xx → bad_request (the request itself: returned, not retried)."""
    status = response.status_code
    text = message or f"HTTP {status}"
    wait = retry_after(response)
    if status == 429:
        outcome = "rate_limited"
    elif status == 408:
        outcome = "timeout"
    elif status >= 500:
        outcome = "overloaded" if status == 503 else "server_error"
    elif status in (401, 403):
        outcome = "auth_error"
    elif status == 404:
        outcome = "not_found"
    else:
        outcome = "bad_request"
    return provider.error(f"{text} (HTTP {status})" if message else text, outcome=outcome,
                          code=code, param=param, retry_after=wait, upstream_status=status)


def transport_error(provider: Provider, exc: httpx.HTTPError, what: str) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return provider.error(f"{what} timed out ({type(exc).__name__})", outcome="timeout")
    return provider.error(f"{what} failed: {type(exc).__name__}", outcome="connection_error")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ProviderError):
        return exc.outcome in ("timeout", "connection_error", "server_error", "overloaded",
                               "rate_limited")
    return isinstance(exc, httpx.TransportError)


async def with_retries(provider: Provider, fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()` (an idempotent read), retried on transient errors `settings.retries` times with
    exponential backoff and jitter."""
    async for attempt in AsyncRetrying(
            stop=stop_after_attempt(provider.settings.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=2.0) + wait_random(0, 0.2),
            retry=retry_if_exception(_transient), reraise=True):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover


async def get_json(provider: Provider, http: httpx.AsyncClient, url: str, *, what: str,
                   params: dict[str, Any] | None = None) -> Any:
    """GET a JSON document, retried on transient errors."""

    async def once() -> Any:
        try:
            response = await http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise transport_error(provider, exc, what) from None
        if response.status_code >= 400:
            raise status_error(provider, response, f"{what} failed")
        body = body_of(response)
        if body is None:
            raise provider.error(f"{what} returned no JSON", outcome="bad_output")
        return body

    return await with_retries(provider, once)


def check_download_url(provider: Provider, url: str) -> None:
    """Follow only https URLs (or the provider's own host and scheme, e.g. a local ComfyUI),
    and never an IP literal in a private/loopback/link-local range unless it is the
    provider's own host: a result URL must not make us fetch from our own network."""
    base = urlsplit(provider.settings.base_url)
    target = urlsplit(url)
    same_origin = (target.scheme, target.netloc) == (base.scheme, base.netloc)
    if target.scheme != "https" and not same_origin:
        raise provider.error(f"returned a result URL with scheme {target.scheme!r} "
                             "(only https is followed)", outcome="bad_output")
    host = target.hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and not same_origin and (ip.is_private or ip.is_loopback
                                                or ip.is_link_local or ip.is_reserved):
        raise provider.error("returned a result URL on a private address", outcome="bad_output")


async def download(provider: Provider, http: httpx.AsyncClient, url: str, *,
                   params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   check_url: bool = True, **meta: Any) -> ProviderImage:
    """Fetch and check one result image: at most `max_image_bytes` read (streamed), an
    image Content-Type, magic bytes matching it, decodable. Retried on transient errors."""
    if check_url:
        check_download_url(provider, url)
    limit = provider.settings.max_image_bytes

    async def once() -> ProviderImage:
        try:
            async with http.stream("GET", url, params=params, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise status_error(provider, response, "result download failed")
                declared = response.headers.get("content-type", "")
                if not declared.lower().startswith("image/"):
                    raise provider.error(f"result download has Content-Type "
                                         f"{declared or 'none'!r}, not an image",
                                         outcome="bad_output")
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > limit:
                    raise provider.error(f"result image is {length} bytes; the limit is "
                                         f"{limit}", outcome="bad_output")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise provider.error(f"result image exceeds {limit} bytes",
                                             outcome="bad_output")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise transport_error(provider, exc, "result download") from None
        return provider.decode(b"".join(chunks), declared_type=declared, **meta)

    return await with_retries(provider, once)


async def post_json(provider: Provider, http: httpx.AsyncClient, url: str, payload: Any, *,
                    what: str) -> httpx.Response:
    """POST once (a submission: not retried here). Transport errors become ProviderErrors;
    the response is returned whatever its status (the caller maps its error shape)."""
    try:
        return await http.post(url, json=payload)
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc, what) from None
