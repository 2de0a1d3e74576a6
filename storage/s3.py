"""S3-compatible asset stores through boto3: AWS S3, MinIO, Cloudflare R2 (any endpoint URL)
and Supabase Storage.

Writes are all-or-nothing: one ``PutObject`` per asset (S3 makes an object visible only when
its upload completed, with the integrity checksum verified server-side). A failed upload is
retried a bounded number of times with exponential back-off and jitter (tenacity; botocore's
own retries are off so that the policy is this one, visible and testable), then reported as
`AssetWriteError` — after a best-effort delete, since an attempt whose response was lost may
have stored the object: nothing is left behind at the key.

Credentials come from explicit settings or, when absent, from boto3's normal chain
(``AWS_ACCESS_KEY_ID``…, shared config, instance/IRSA roles). They live only inside the boto3
client: not on the store object, never in its repr or logs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from storage.assets import (
    AssetNotFound,
    AssetStoreError,
    AssetWriteError,
    with_retries,
)
from storage.assets import GaveUp as _GaveUp
from storage.assets import describe_error as _describe

logger = logging.getLogger(__name__)

# S3 error codes worth another attempt (besides any 5xx / 429 and connection errors)
RETRYABLE_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "BadDigest", "IncompleteBody",
    "XAmzContentSHA256Mismatch",
})
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # SigV4's limit

AddressingStyle = Literal["auto", "path", "virtual"]


def _secret(value: Any) -> str | None:
    """A plain string from a str or a pydantic SecretStr (None stays None)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in RETRYABLE_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


class S3AssetStore:
    """Objects in an S3 bucket (under an optional key prefix); presigned GET URLs.

    `endpoint_url` selects an S3-compatible service (MinIO ``http://minio:9000``, R2
    ``https://<account>.r2.cloudflarestorage.com``); with one, botocore's newer default
    request checksums (``x-amz-checksum-crc32``, which several such services reject) are
    replaced by a ``Content-MD5`` header, which they all verify.
    """

    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: Any = None,
        secret_access_key: Any = None,
        session_token: Any = None,
        presign_expiry_s: int = 3600,
        addressing_style: AddressingStyle = "auto",
        max_attempts: int = 4,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        create_bucket: bool = False,
    ):
        if not isinstance(bucket, str) or not 3 <= len(bucket) <= 63:
            raise ValueError(f"bucket must be a bucket name of 3–63 characters, got {bucket!r}")
        if not isinstance(presign_expiry_s, int) or \
                not 1 <= presign_expiry_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"presign_expiry_s must be an integer from 1 to "
                             f"{MAX_PRESIGN_EXPIRY_S} (7 days), got {presign_expiry_s!r}")
        if addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be one of auto, path, virtual; "
                             f"got {addressing_style!r}")
        if not isinstance(max_attempts, int) or not 1 <= max_attempts <= 20:
            raise ValueError(f"max_attempts must be an integer from 1 to 20, got "
                             f"{max_attempts!r}")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together "
                             "(or neither, to use boto3's credential chain)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.presign_expiry_s = presign_expiry_s
        self.max_attempts = max_attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._content_md5 = endpoint_url is not None

        # heavy (~0.3 s of imports): only a process that builds an S3 store pays for them
        import boto3
        from botocore.config import Config

        checksums: dict[str, str] = {}
        if self._content_md5:
            checksums = {"request_checksum_calculation": "when_required",
                         "response_checksum_validation": "when_required"}
        session = boto3.session.Session(
            aws_access_key_id=_secret(access_key_id),
            aws_secret_access_key=_secret(secret_access_key),
            aws_session_token=_secret(session_token),
            region_name=region,
        )
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                retries={"total_max_attempts": 1, "mode": "standard"},  # ours only
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                **checksums,
            ),
        )
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bucket={self.bucket!r}, prefix={self.prefix!r}, "
                f"endpoint_url={self.endpoint_url!r}, region={self.region!r})")

    # -- the AssetStore interface -----------------------------------------------------------
    def object_key(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..")
                                                 for p in key.split("/")):
            raise ValueError(f"asset key {key!r} must be a relative path without empty, "
                             "'.' or '..' segments")
        return self.prefix + key

    def put(self, *, key: str, data: bytes, content_type: str) -> None:
        object_key = self.object_key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key, "Body": data,
                                  "ContentType": content_type}
        if self._content_md5:
            kwargs["ContentMD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            self._retrying("put", key, lambda: self.client.put_object(**kwargs))
        except _GaveUp as failed:
            self._remove_leftover(object_key)
            raise AssetWriteError(
                f"could not store asset {key!r} in bucket {self.bucket!r} after "
                f"{failed.attempts} attempt(s): {_describe(failed.cause)}", key=key,
                attempts=failed.attempts) from failed.cause

    def get(self, *, key: str) -> bytes:
        object_key = self.object_key(key)

        def fetch() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=object_key)["Body"].read()

        try:
            return self._retrying("get", key, fetch)
        except _GaveUp as failed:
            exc = failed.cause
            if isinstance(exc, ClientError) and \
                    exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise AssetNotFound(key) from None
            raise AssetStoreError(f"could not read asset {key!r}: {_describe(exc)}") from exc

    def delete(self, *, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        object_key = self.object_key(key)
        try:
            self._retrying("delete", key, lambda: self.client.delete_object(
                Bucket=self.bucket, Key=object_key))
        except _GaveUp as failed:
            raise AssetStoreError(f"could not delete asset {key!r}: "
                                  f"{_describe(failed.cause)}") from failed.cause

    def url(self, *, key: str, expires_in: int | None = None) -> str | None:
        """A presigned GET URL valid for `expires_in` seconds (default `presign_expiry_s`)."""
        expires = self.presign_expiry_s if expires_in is None else expires_in
        if not isinstance(expires, int) or not 1 <= expires <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expires_in must be an integer from 1 to {MAX_PRESIGN_EXPIRY_S}, "
                             f"got {expires!r}")
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=expires)

    # -- extras ------------------------------------------------------------------------------
    def exists(self, *, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (handy for MinIO and local tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region and self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self.client.create_bucket(**kwargs)

    def _retrying(self, what: str, key: str, call):
        """`call()` with bounded retries of transient errors; any failure → `_GaveUp`."""
        return with_retries(call, what=what, key=key, is_retryable=is_retryable,
                            max_attempts=self.max_attempts, initial_s=self.retry_initial_s,
                            max_s=self.retry_max_s, log=logger)

    def _remove_leftover(self, object_key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=object_key)
        except Exception as exc:  # the store is unreachable: nothing can be there to remove
            logger.warning("after a failed upload, could not remove %r (the upload most "
                           "likely never landed): %s", object_key, _describe(exc))


class SupabaseAssetStore(S3AssetStore):
    """Supabase Storage through its S3-compatible endpoint, with boto3.

    Why the S3 endpoint rather than the `supabase` client's storage API: it is the same,
    tested code path as S3 (bounded retries, all-or-nothing ``PutObject``, SigV4 presigned
    URLs that Supabase honours); it adds no dependency (the `supabase` package brings its own
    HTTP, auth and realtime stack); and it runs in tests against a real S3 server (moto), where
    a Supabase REST fake would test only our fake.

    Credentials: the S3 access keys of the project (Storage settings → S3 access keys; server
    side, they bypass row-level security) or, to act as a user under RLS, ``anon_key`` plus
    ``session_token`` (the user's JWT) — then the access key id is the project ref. `region`
    is the project's region (shown next to the endpoint). `endpoint_url` defaults to
    ``{supabase_url}/storage/v1/s3``; Supabase requires path-style addressing.
    """

    name = "supabase"

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        supabase_url: str | None = None,
        endpoint_url: str | None = None,
        access_key_id: Any = None,
        secret_access_key: Any = None,
        anon_key: Any = None,
        session_token: Any = None,
        prefix: str = "",
        presign_expiry_s: int = 3600,
        max_attempts: int = 4,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        create_bucket: bool = False,
    ):
        if endpoint_url is None:
            if not supabase_url:
                raise ValueError("supabase_url (https://<project-ref>.supabase.co) or "
                                 "endpoint_url is required for the supabase asset store")
            endpoint_url = supabase_s3_endpoint(supabase_url)
        if anon_key is not None:
            if session_token is None or access_key_id is not None:
                raise ValueError("anon_key goes with session_token (a user JWT) and without "
                                 "access_key_id")
            if not supabase_url:
                raise ValueError("supabase_url is required with anon_key (its project ref is "
                                 "the access key id)")
            access_key_id = project_ref(supabase_url)
            secret_access_key = anon_key
        elif access_key_id is None or secret_access_key is None:
            raise ValueError("the supabase asset store needs access_key_id and "
                             "secret_access_key (S3 access keys), or anon_key with "
                             "session_token")
        super().__init__(
            bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, region=region,
            access_key_id=access_key_id, secret_access_key=secret_access_key,
            session_token=session_token, presign_expiry_s=presign_expiry_s,
            addressing_style="path", max_attempts=max_attempts,
            retry_initial_s=retry_initial_s, retry_max_s=retry_max_s,
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
            create_bucket=create_bucket)


def supabase_s3_endpoint(supabase_url: str) -> str:
    """``https://<ref>.supabase.co`` → ``https://<ref>.supabase.co/storage/v1/s3``."""
    parts = urlsplit(supabase_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"supabase_url must be an http(s) URL like "
                         f"https://<project-ref>.supabase.co, got {supabase_url!r}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/storage/v1/s3"


def project_ref(supabase_url: str) -> str:
    host = urlsplit(supabase_url).hostname or ""
    return host.split(".")[0]
