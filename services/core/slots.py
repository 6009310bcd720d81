"""Redis Cluster's key-to-slot function (CRC16 of the key or its hash tag) and the cluster URL's node list.

Both are pure: the slot of a key is how every cluster-aware client picks the node to send a command to, and
how bookstream's key layout is checked to keep each multi-key command inside one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

SLOTS: Final = 16384
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""A cluster URL's scheme and the scheme each of its nodes is reached with (TLS or not)."""


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE: Final = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the checksum Redis Cluster slots are taken from."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that decides its slot: what lies between the first `{` and the next `}` when that
    is not empty, else the whole key (Redis's rule, so `a{}b` and `a{b` hash whole)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: bytes | str) -> int:
    """The cluster slot of `key`, as `CLUSTER KEYSLOT` answers it."""
    raw = key.encode() if isinstance(key, str) else key
    return crc16(hash_tag(raw)) % SLOTS


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_node_urls(url: str) -> list[str]:
    """The one-node URLs of a cluster URL's seed nodes: `redis+cluster://u:p@h1:7000,h2:7001/?opt=1` gives
    `redis://u:p@h1:7000/?opt=1` and `redis://u:p@h2:7001/?opt=1` (credentials and options shared).

    Raises ValueError when `url` is no cluster URL or names no node; each node URL is left for the caller's
    URL check."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(CLUSTER_SCHEMES)}")
    # A raw `/`, `?` or `#` in a password is refused by the settings' URL check, so userinfo ends before them.
    at = rest.rfind("@", 0, _end_of_hosts(rest, 0))
    userinfo, hosts_and_rest = (rest[:at + 1], rest[at + 1:]) if at >= 0 else ("", rest)
    end = _end_of_hosts(hosts_and_rest, 0)
    hosts, tail = hosts_and_rest[:end], hosts_and_rest[end:]
    nodes = [host for host in hosts.split(",") if host]
    if not nodes:
        raise ValueError("a cluster URL names at least one node (host:port[,host:port...])")
    return [f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{node}{tail}" for node in nodes]


def _end_of_hosts(text: str, start: int) -> int:
    """Where the host list that starts at `start` ends: at the first `/`, `?` or `#` after it."""
    ends = [index for index in (text.find(char, start) for char in "/?#") if index >= 0]
    return min(ends) if ends else len(text)


_SCRIPT_CALLS: Final = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"})
_STREAM_READS: Final = frozenset({"XREAD", "XREADGROUP"})
_KEYLESS: Final = frozenset({"ASKING", "AUTH", "CLIENT", "CLUSTER", "CONFIG", "DBSIZE", "FLUSHALL", "FUNCTION",
                             "HELLO", "INFO", "PING", "READONLY", "SCAN", "SCRIPT", "SELECT", "TIME", "WAIT"})


def _text(part: object) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


def command_key(command: Sequence[object]) -> bytes | str | None:
    """The key that routes `command` on a cluster (its first key), or None for a command without keys.

    A command naming several keys goes where its first key lives; bookstream's key layout keeps the others
    in the same slot (Redis answers CROSSSLOT otherwise)."""
    name = _text(command[0]).upper()
    if name in _SCRIPT_CALLS:
        return _as_key(command[3]) if len(command) > 3 and int(_text(command[2])) > 0 else None
    if name in _STREAM_READS:
        for index, part in enumerate(command):
            if _text(part).upper() == "STREAMS" and index + 1 < len(command):
                return _as_key(command[index + 1])
        return None
    if name in _KEYLESS or len(command) < 2:
        return None
    return _as_key(command[1])


def _as_key(part: object) -> bytes | str:
    return part if isinstance(part, bytes | str) else str(part)
