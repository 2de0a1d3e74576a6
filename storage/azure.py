"""Azure Blob Storage asset store, through the official `azure-storage-blob` SDK.

Credentials, one of (as Azure hands them out):
- ``connection_string`` (``DefaultEndpointsProtocol=…;AccountName=…;AccountKey=…`` or with a
  ``SharedAccessSignature=…``);
- ``account_url`` + ``account_key`` (shared key);
- ``account_url`` + ``sas_token`` (a container- or account-level SAS with read/write/delete).

Images and videos go to separate containers (``image_container``, ``video_container``): a key
whose extension is a video's (mp4, webm, mov, …) lives in the video container, any other in
the image container; the key itself is the blob name (same layout as every store).

Writes are all-or-nothing: the bytes are staged as uncommitted blocks (``Put Block``, each with
its MD5 checked by the service) and become the blob only with ``Put Block List``. Until that
commit nothing is visible at the key; uncommitted blocks of a failed upload are dropped by
the service (after 7 days, or at the next commit of that blob). Each call is retried a
bounded number of times (`storage.assets.with_retries`, the policy of the S3 store; the SDK's
own retries are off); an upload that still fails is reported as `AssetWriteError`, after a
best-effort delete in case a commit whose response was lost did land.

``url`` is a short-lived read-only SAS for the one blob (signed with the account key). With a
SAS credential the store has no key to sign with, and handing out its own (writable,
long-lived) SAS would leak it: ``url`` is then None and the gateway serves the bytes itself
through its own signed ``GET /v1/assets/{id}`` URLs.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

from storage.assets import (
    AssetNotFound,
    AssetStoreError,
    AssetWriteError,
    GaveUp,
    describe_error,
    with_retries,
)

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({"mp4", "webm", "mov", "mkv", "m4v", "avi"})
MAX_SAS_EXPIRY_S = 7 * 24 * 3600
BLOCK_BYTES = 4 * 1024 * 1024
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def is_retryable(exc: BaseException) -> bool:
    from azure.core.exceptions import (
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):  # connection, timeout
        return True
    if isinstance(exc, HttpResponseError):
        return (exc.status_code or 0) in RETRYABLE_STATUS
    return False


def _valid_container(name: str, what: str) -> str:
    ok = (isinstance(name, str) and 3 <= len(name) <= 63 and name[0].isalnum()
          and all(c.islower() or c.isdigit() or c == "-" for c in name) and "--" not in name
          and not name.endswith("-"))
    if not ok:
        raise ValueError(f"{what} must be an Azure container name (3–63 lowercase letters, "
                         f"digits and single hyphens), got {name!r}")
    return name


class AzureBlobAssetStore:
    """Blobs in two Azure containers (images, videos); short-lived read SAS URLs."""

    name = "azure"

    def __init__(
        self,
        *,
        account_url: str | None = None,
        account_key: Any = None,
        sas_token: Any = None,
        connection_string: Any = None,
        image_container: str = "images",
        video_container: str = "videos",
        prefix: str = "",
        presign_expiry_s: int = 3600,
        max_attempts: int = 4,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        block_bytes: int = BLOCK_BYTES,
        create_containers: bool = False,
    ):
        given = [n for n, v in (("connection_string", connection_string),
                                ("account_key", account_key), ("sas_token", sas_token))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("the azure asset store needs exactly one of connection_string, "
                             "account_url + account_key, or account_url + sas_token; got "
                             f"{', '.join(given) or 'none'}")
        if connection_string is None and not account_url:
            raise ValueError(f"account_url (https://<account>.blob.core.windows.net) is "
                             f"required with {given[0]}")
        if not isinstance(presign_expiry_s, int) or not 1 <= presign_expiry_s <= MAX_SAS_EXPIRY_S:
            raise ValueError(f"presign_expiry_s must be an integer from 1 to "
                             f"{MAX_SAS_EXPIRY_S} (7 days), got {presign_expiry_s!r}")
        if not isinstance(max_attempts, int) or not 1 <= max_attempts <= 20:
            raise ValueError(f"max_attempts must be an integer from 1 to 20, got "
                             f"{max_attempts!r}")
        if not isinstance(block_bytes, int) or not 1 <= block_bytes <= 100 * 1024 * 1024:
            raise ValueError(f"block_bytes must be from 1 to 100 MiB, got {block_bytes!r}")
        self.image_container = _valid_container(image_container, "image_container")
        self.video_container = _valid_container(video_container, "video_container")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_expiry_s = presign_expiry_s
        self.max_attempts = max_attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.block_bytes = block_bytes

        # heavy imports: only a process that builds an Azure store pays for them
        from azure.storage.blob import BlobServiceClient

        options = dict(retry_total=0,  # ours only (with_retries)
                       connection_timeout=connect_timeout_s, read_timeout=read_timeout_s)
        if connection_string is not None:
            self.client = BlobServiceClient.from_connection_string(
                _secret(connection_string), **options)
        elif account_key is not None:
            from azure.core.credentials import AzureNamedKeyCredential

            probe = BlobServiceClient(account_url)  # parses the account name from the URL
            credential = AzureNamedKeyCredential(probe.account_name, _secret(account_key))
            self.client = BlobServiceClient(account_url, credential=credential, **options)
        else:
            self.client = BlobServiceClient(account_url, credential=_secret(sas_token),
                                            **options)
        self.account_url = self.client.url.split("?")[0]
        self.account_name = self.client.account_name
        # the key that signs read SAS URLs: never on the store object (only inside the client)
        self.can_sign = getattr(self.client.credential, "account_key", None) is not None
        if create_containers:
            self.ensure_containers()

    def __repr__(self) -> str:
        return (f"AzureBlobAssetStore(account_url={self.account_url!r}, image_container="
                f"{self.image_container!r}, video_container={self.video_container!r}, "
                f"prefix={self.prefix!r})")

    # -- where a key lives --------------------------------------------------------------------
    def blob_name(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..")
                                                 for p in key.split("/")):
            raise ValueError(f"asset key {key!r} must be a relative path without empty, "
                             "'.' or '..' segments")
        return self.prefix + key

    def container_for(self, key: str) -> str:
        ext = PurePosixPath(key).suffix.lower().lstrip(".")
        return self.video_container if ext in VIDEO_EXTENSIONS else self.image_container

    def _blob(self, key: str):
        return self.client.get_blob_client(self.container_for(key), self.blob_name(key))

    def _retrying(self, what: str, key: str, call):
        return with_retries(call, what=what, key=key, is_retryable=is_retryable,
                            max_attempts=self.max_attempts, initial_s=self.retry_initial_s,
                            max_s=self.retry_max_s, log=logger)

    # -- the AssetStore interface -------------------------------------------------------------
    def put(self, *, key: str, data: bytes, content_type: str) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        blob = self._blob(key)
        upload = secrets.token_hex(8)  # block ids: same length within a blob, unique per upload
        blocks: list[BlobBlock] = []
        committing = False
        try:
            for index, start in enumerate(range(0, max(len(data), 1), self.block_bytes)):
                chunk = data[start:start + self.block_bytes]
                block_id = f"{upload}-{index:06d}"
                self._retrying("put", key, lambda b=block_id, c=chunk: blob.stage_block(
                    b, c, length=len(c), validate_content=True))
                blocks.append(BlobBlock(block_id=block_id))
            committing = True
            self._retrying("put", key, lambda: blob.commit_block_list(
                blocks, content_settings=ContentSettings(content_type=content_type)))
        except GaveUp as failed:
            if committing:  # a commit whose answer was lost may have landed
                self._remove_leftover(blob)
            raise AssetWriteError(
                f"could not store asset {key!r} in container {blob.container_name!r} after "
                f"{failed.attempts} attempt(s): {describe_error(failed.cause)}", key=key,
                attempts=failed.attempts) from failed.cause

    def get(self, *, key: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(key)
        try:
            return self._retrying("get", key, lambda: blob.download_blob().readall())
        except GaveUp as failed:
            if isinstance(failed.cause, ResourceNotFoundError):
                raise AssetNotFound(key) from None
            raise AssetStoreError(f"could not read asset {key!r}: "
                                  f"{describe_error(failed.cause)}") from failed.cause

    def delete(self, *, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(key)

        def remove() -> None:
            try:
                blob.delete_blob()
            except ResourceNotFoundError:
                pass

        try:
            self._retrying("delete", key, remove)
        except GaveUp as failed:
            raise AssetStoreError(f"could not delete asset {key!r}: "
                                  f"{describe_error(failed.cause)}") from failed.cause

    def url(self, *, key: str, expires_in: int | None = None) -> str | None:
        """A read-only SAS URL for this blob, valid `expires_in` seconds (default
        `presign_expiry_s`); None with a SAS credential (the gateway serves the bytes)."""
        expires = self.presign_expiry_s if expires_in is None else expires_in
        if not isinstance(expires, int) or not 1 <= expires <= MAX_SAS_EXPIRY_S:
            raise ValueError(f"expires_in must be an integer from 1 to {MAX_SAS_EXPIRY_S}, "
                             f"got {expires!r}")
        if not self.can_sign:
            return None
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = self._blob(key)
        now = datetime.now(timezone.utc)
        sas = generate_blob_sas(
            account_name=self.account_name, container_name=blob.container_name,
            blob_name=blob.blob_name, account_key=self.client.credential.account_key,
            permission=BlobSasPermissions(read=True), start=now - timedelta(minutes=5),
            expiry=now + timedelta(seconds=expires))
        return f"{blob.url}?{sas}"

    # -- extras -------------------------------------------------------------------------------
    def exists(self, *, key: str) -> bool:
        return self._blob(key).exists()

    def ensure_containers(self) -> None:
        """Create both containers if missing (Azurite and first deploys)."""
        from azure.core.exceptions import ResourceExistsError

        for name in dict.fromkeys((self.image_container, self.video_container)):
            try:
                self.client.create_container(name)
            except ResourceExistsError:
                pass

    def _remove_leftover(self, blob) -> None:
        try:
            blob.delete_blob()
        except Exception as exc:  # noqa: BLE001 - unreachable store: nothing landed to remove
            logger.warning("after a failed upload, could not remove %r (the upload most "
                           "likely never landed): %s", blob.blob_name, describe_error(exc))
