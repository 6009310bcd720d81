"""Fixtures of the top10 tests: the service's environment, the key names, a stand-in for ingest's liveness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from services.core.keys import Keys
from tests.harness import base_env
from tests.top10.feed import SESSION, Heartbeat


@pytest.fixture
def top10_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    """Short claim and expiry times, so recovery shows within a test's patience."""
    return base_env(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, CLAIM_IDLE="1", CONSUMER_EXPIRY="2",
                    LOG_LEVEL="INFO")


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(key_prefix)


@pytest.fixture
def heartbeat(redis_url: str, keys: Keys) -> Iterator[Heartbeat]:
    """Session SESSION kept alive in the shared Redis, as a healthy ingest keeps its own."""
    beating = Heartbeat(redis.Redis.from_url(redis_url), keys, SESSION)
    yield beating
    beating.close()
