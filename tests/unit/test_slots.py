"""The cluster slot function against Redis's own answers, and the cluster URL's node list."""

from __future__ import annotations

import pytest
import redis

from services.core.slots import SLOTS, cluster_node_urls, hash_tag, is_cluster_url, key_slot

KNOWN = [("foo", 12182), ("123456789", 12739), ("{user1000}.following", 3443), ("{user1000}.followers", 3443),
         ("", 0), ("a{}b", key_slot("a{}b")), ("bitmex:l2:{XBTUSD}", key_slot("XBTUSD"))]


@pytest.mark.parametrize(("key", "slot"), KNOWN)
def test_known_slots(key: str, slot: int) -> None:
    assert key_slot(key) == slot == key_slot(key.encode())


def test_hash_tags_follow_redis_rules() -> None:
    assert hash_tag(b"x{a}y{b}") == b"a"       # the first tag counts
    assert hash_tag(b"x{}y{b}") == b"x{}y{b}"  # an empty first tag: the whole key
    assert hash_tag(b"x{a") == b"x{a"          # no closing brace: the whole key
    assert hash_tag(b"{{a}}") == b"{a"


def test_slots_agree_with_cluster_keyslot(redis_cluster_url: str) -> None:
    keys = ["foo", "x{a}y{b}", "x{}y", "{{a}}", "bitmex:top10:{XBTUSD}", "bitmex:symbols", "é{ü}",
            *map(str, range(200))]
    client = redis.Redis.from_url(cluster_node_urls(redis_cluster_url)[0])
    try:
        answers = [int(client.cluster("KEYSLOT", key)) for key in keys]
    finally:
        client.close()
    assert [key_slot(key) for key in keys] == answers
    assert all(0 <= slot < SLOTS for slot in answers)


def test_cluster_urls_split_into_node_urls() -> None:
    assert is_cluster_url("rediss+cluster://h:1") and not is_cluster_url("redis://h:1")
    assert cluster_node_urls("rediss+cluster://u:p@h1:7000,[::1]:7001/0?ssl_cert_reqs=none") == [
        "rediss://u:p@h1:7000/0?ssl_cert_reqs=none", "rediss://u:p@[::1]:7001/0?ssl_cert_reqs=none"]
    with pytest.raises(ValueError, match="scheme"):
        cluster_node_urls("redis://h1:7000")
