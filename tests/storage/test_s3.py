"""S3 and Supabase asset stores through boto3 against moto's S3 server over real HTTP."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from storage.assets import AssetNotFound, AssetWriteError
from storage.config import build_asset_store
from storage.s3 import S3AssetStore, SupabaseAssetStore, project_ref, supabase_s3_endpoint
from tests.conftest import free_port
from tests.storage.conftest import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET, make_s3_store

KEY = "default/generation/2026/11/img_1.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def objects(store: S3AssetStore) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_kw):
        yield self.body


def failing_puts(store: S3AssetStore, failures: int, *, make_error):
    """Make the first `failures` PutObject attempts fail (each a real request path up to the
    wire); later ones go to the server. Returns the attempt counter."""
    calls = {"n": 0}

    def before_send(request, **_kw):
        calls["n"] += 1
        if calls["n"] <= failures:
            return make_error(request)
        return None  # send it for real

    store.client.meta.events.register("before-send.s3.PutObject", before_send)
    return calls


def slow_down(request) -> AWSResponse:
    body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")
    return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))


def test_put_get_presigned_url_delete(s3_store):
    s3_store.put(key=KEY, data=PNG, content_type="image/png")
    assert objects(s3_store) == [KEY]
    assert s3_store.get(key=KEY) == PNG and s3_store.exists(key=KEY)
    url = s3_store.url(key=KEY, expires_in=120)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    r = httpx.get(url, timeout=10)  # any HTTP client, no credentials: the URL carries them
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    default = parse_qs(urlsplit(s3_store.url(key=KEY)).query)
    assert default["X-Amz-Expires"] == [str(s3_store.presign_expiry_s)]
    s3_store.delete(key=KEY)
    s3_store.delete(key=KEY)  # idempotent
    assert objects(s3_store) == [] and not s3_store.exists(key=KEY)
    with pytest.raises(AssetNotFound):
        s3_store.get(key=KEY)
    with pytest.raises(ValueError, match="expires_in must be an integer from 1 to 604800"):
        s3_store.url(key=KEY, expires_in=0)


def test_prefix_and_key_checks(s3_endpoint):
    store = make_s3_store(s3_endpoint, prefix="/gateway/prod/")
    store.put(key=KEY, data=b"x", content_type="image/png")
    assert objects(store) == [f"gateway/prod/{KEY}"]
    assert store.get(key=KEY) == b"x"
    for bad in ("../etc/passwd", "/abs.png", "a//b.png", ""):
        with pytest.raises(ValueError, match="must be a relative path"):
            store.put(key=bad, data=b"x", content_type="image/png")


def test_transient_failures_are_retried_then_succeed(s3_store, caplog):
    calls = failing_puts(s3_store, 2, make_error=slow_down)
    with caplog.at_level(logging.WARNING, logger="storage.s3"):
        s3_store.put(key=KEY, data=PNG, content_type="image/png")
    assert calls["n"] == 3 and s3_store.get(key=KEY) == PNG
    assert caplog.text.count("SlowDown") == 2 and "attempt 1 of 4" in caplog.text


def test_upload_that_keeps_failing_is_reported_and_leaves_nothing(s3_store):
    """The worst case: the server stored the object but every response was lost. After the
    bounded retries the store reports the failure and removes what landed."""
    sneaky = make_s3_store(s3_store.endpoint_url, bucket=s3_store.bucket, create_bucket=False)

    def stored_but_response_lost(request):
        sneaky.client.put_object(Bucket=s3_store.bucket, Key=KEY, Body=PNG)
        raise ReadTimeoutError(endpoint_url=request.url)

    calls = failing_puts(s3_store, 99, make_error=stored_but_response_lost)
    with pytest.raises(AssetWriteError, match="after 4 attempt") as err:
        s3_store.put(key=KEY, data=PNG, content_type="image/png")
    assert calls["n"] == 4 and err.value.attempts == 4 and err.value.key == KEY
    assert isinstance(err.value.__cause__, ReadTimeoutError)
    assert objects(s3_store) == []  # nothing half-there, nothing orphaned


def test_unreachable_endpoint_is_retried_then_reported(s3_endpoint):
    dead = S3AssetStore(bucket="ps-dead", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        region=S3_REGION, access_key_id="AKID", secret_access_key="x",
                        max_attempts=3, retry_initial_s=0.01, retry_max_s=0.02,
                        connect_timeout_s=1)
    with pytest.raises(AssetWriteError, match="after 3 attempt.*EndpointConnectionError"):
        dead.put(key=KEY, data=PNG, content_type="image/png")


def test_permanent_errors_fail_at_once(s3_endpoint):
    store = make_s3_store(s3_endpoint, create_bucket=False)  # bucket never created
    with pytest.raises(AssetWriteError, match="after 1 attempt.*NoSuchBucket"):
        store.put(key=KEY, data=PNG, content_type="image/png")


def test_supabase_store_uses_the_s3_code_path(s3_endpoint):
    store = SupabaseAssetStore(bucket="ps-supabase", region=S3_REGION, endpoint_url=s3_endpoint,
                               access_key_id=S3_ACCESS_KEY_ID, secret_access_key=S3_SECRET,
                               create_bucket=True)
    assert store.name == "supabase"
    assert store.client.meta.config.s3["addressing_style"] == "path"
    store.put(key=KEY, data=PNG, content_type="image/png")
    assert httpx.get(store.url(key=KEY, expires_in=60), timeout=10).content == PNG


def test_supabase_settings():
    assert supabase_s3_endpoint("https://abcd1234.supabase.co/") == \
        "https://abcd1234.supabase.co/storage/v1/s3"
    assert project_ref("https://abcd1234.supabase.co") == "abcd1234"
    user = SupabaseAssetStore(bucket="photos", region="eu-central-1",
                              supabase_url="https://abcd1234.supabase.co",
                              anon_key="anon-key-value", session_token="user.jwt.value")
    assert user.endpoint_url == "https://abcd1234.supabase.co/storage/v1/s3"
    creds = user.client._request_signer._credentials
    assert (creds.access_key, creds.token) == ("abcd1234", "user.jwt.value")
    with pytest.raises(ValueError, match="supabase_url .* or endpoint_url is required"):
        SupabaseAssetStore(bucket="photos", region="x", access_key_id="a",
                           secret_access_key="b")
    with pytest.raises(ValueError, match="needs access_key_id and secret_access_key"):
        SupabaseAssetStore(bucket="photos", region="x", supabase_url="https://a.supabase.co")
    with pytest.raises(ValueError, match="anon_key goes with session_token"):
        SupabaseAssetStore(bucket="photos", region="x", supabase_url="https://a.supabase.co",
                           anon_key="k")


def test_builder(tmp_path, s3_endpoint):
    local = build_asset_store("local", root=str(tmp_path), bucket=None)  # None: ignored
    assert local.name == "local" and local.root == tmp_path.resolve()
    s3 = build_asset_store("s3", bucket="ps-built", endpoint_url=s3_endpoint, region=S3_REGION,
                           access_key_id=S3_ACCESS_KEY_ID, secret_access_key=S3_SECRET,
                           presign_expiry_s=900, create_bucket=True)
    s3.put(key=KEY, data=b"x", content_type="image/png")
    assert "X-Amz-Expires=900" in s3.url(key=KEY)
    with pytest.raises(ValueError, match="asset_store must be one of local, s3, supabase"):
        build_asset_store("gcs", bucket="b")
    with pytest.raises(ValueError, match="unknown setting 'bucket' for the 'local' asset store"):
        build_asset_store("local", root=str(tmp_path), bucket="b")
    with pytest.raises(ValueError, match="presign_expiry_s must be an integer"):
        build_asset_store("s3", bucket="ps-built", presign_expiry_s=10**7)
    with pytest.raises(ValueError, match="given together"):
        build_asset_store("s3", bucket="ps-built", access_key_id="only-the-id")


def test_secrets_never_reach_reprs_errors_or_logs(s3_endpoint, caplog, tmp_path):
    from pydantic import SecretStr

    from storage.config import StorageSettings

    with caplog.at_level(logging.DEBUG):  # every logger, botocore's included
        store = make_s3_store(s3_endpoint, secret_access_key=SecretStr(S3_SECRET))
        store.put(key=KEY, data=PNG, content_type="image/png")
        store.get(key=KEY)
        store.url(key=KEY)
        calls = failing_puts(store, 99, make_error=slow_down)
        with pytest.raises(AssetWriteError) as err:
            store.put(key="other.png", data=PNG, content_type="image/png")
        assert calls["n"] == store.max_attempts
        settings = StorageSettings(asset_store="s3", asset_bucket=store.bucket,
                                   asset_endpoint_url=s3_endpoint, asset_region=S3_REGION,
                                   asset_access_key_id=S3_ACCESS_KEY_ID,
                                   asset_secret_access_key=S3_SECRET, data_dir=tmp_path,
                                   supabase_anon_key="anon-" + S3_SECRET)
        built = settings.build_asset_store()
        logging.getLogger("test").info("store %r settings %r %s", built, settings, settings)
    assert caplog.records  # botocore really logged at DEBUG
    texts = [caplog.text, repr(store), str(store), repr(built), repr(settings), str(err.value),
             repr(err.value), str(vars(store))]
    for text in texts:
        assert S3_SECRET not in text
    assert store.bucket in repr(store) and s3_endpoint in repr(store)
