"""Revoked API keys, announced at once to every ingress replica through Redis pub/sub.

Each ingress replica keeps the keys it authenticated for a few seconds (`graphs.auth.KeyCache`)
instead of reading the record store on every request. A revocation is written to the record
store (the truth) and then published on `CHANNEL`; every replica subscribed to it drops that
key from its cache before its next request. `revoke_api_key` does both: the CLI and the tests
revoke through it, never with `RecordStore.revoke_api_key` alone.

Where no Redis is configured (`memory://` rate limits: one local replica), nothing is published
and a revoked key is refused once its cache entry expires (`key_cache_ttl_s`, 2 s by default).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

CHANNEL = "photostudio:api-keys:revoked"


def is_redis_url(url: str | None) -> bool:
    return bool(url) and url.startswith(("redis://", "rediss://"))


def announce_revoked(url: str | None, key_id: str) -> bool:
    """Publish `key_id`'s revocation on `url` (a redis:// URL; anything else: nothing to do).
    True when published. A Redis error is logged, not raised: the revocation is already in
    the record store, and replicas' cache entries expire on their own."""
    if not is_redis_url(url):
        return False
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.publish(CHANNEL, key_id)
        return True
    except redis.RedisError as exc:
        logger.warning("could not announce the revocation of key %s on Redis (%s: %s); "
                       "replicas refuse it when their cached entry expires", key_id,
                       type(exc).__name__, exc)
        return False
    finally:
        client.close()


def revoke_api_key(records: Any, *, key_id: str, events_url: str | None) -> bool:
    """Revoke `key_id` in the record store and announce it to every replica. False: no such
    key, or already revoked (nothing announced)."""
    if not records.revoke_api_key(key_id=key_id):
        return False
    announce_revoked(events_url, key_id)
    return True


__all__ = ["CHANNEL", "announce_revoked", "is_redis_url", "revoke_api_key"]
