"""Typed settings built from environment variables, with command-line flags that override them.

Every setting has one environment variable and one flag (the variable's name in lower case with dashes),
so `docker-compose.yml`, the README and `--help` all speak the same names. Invalid values stop the process
with exit code 2 and one line naming the variable, raised here as `ConfigError`.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LIVE_WS_URL = "wss://ws.bitmex.com/realtime"
SYMBOL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
L2_TABLE_CHOICES = ("orderBookL2", "orderBookL2_25")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable and the problem."""


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, safe to print in logs, errors and status.

    Works on the text rather than a parsed URL, so even a URL too malformed to parse is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - property access validates the port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}")
        if not parts.hostname and not (parts.scheme == "unix" and parts.path):
            raise ValueError("URL has no host")
        return raw

    return parse


def _symbols(raw: str) -> tuple[str, ...]:
    names = [part.strip() for part in raw.split(",")]
    if not raw.strip():
        raise ValueError("symbol list is empty")
    for name in names:
        if not SYMBOL_PATTERN.fullmatch(name):
            raise ValueError(f"invalid symbol {name!r} (expected [A-Za-z0-9_.-]{{1,32}})")
    return tuple(dict.fromkeys(names))


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"not an integer: {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number of seconds: {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0, got {raw}")
    return value


def _port(raw: str) -> int:
    value = _int(0)(raw)
    if value > 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _choice(options: tuple[str, ...], fold: Callable[[str], str] = str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = fold(raw.strip())
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", raw):
        raise ValueError(f"invalid key prefix {raw!r} (expected [A-Za-z0-9_.-]{{1,64}})")
    return raw


def _name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", raw):
        raise ValueError(f"invalid instance name {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: its environment variable, default, parser and help text."""

    field: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret_url: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("redis_url", "REDIS_URL", "redis://localhost:6379/0",
            _url(("redis", "rediss", "unix")), "Redis server URL", secret_url=True),
    Setting("mongo_url", "MONGO_CONNECTION_STRING", "mongodb://localhost:27017",
            _url(("mongodb", "mongodb+srv")), "MongoDB connection string", secret_url=True),
    Setting("mongo_database", "MONGO_DATABASE", "bitmex", _prefix, "MongoDB database name"),
    Setting("ws_url", "BITMEX_WS_URL", LIVE_WS_URL, _url(("ws", "wss")),
            "BitMEX realtime websocket URL (the live venue closed on 2026-09-23; point it at `bookstream exchange`)",
            secret_url=True),
    Setting("symbols", "SYMBOLS", "XBTUSD", _symbols, "comma-separated symbols to subscribe"),
    Setting("key_prefix", "KEY_PREFIX", "bitmex", _prefix, "prefix of every Redis key"),
    Setting("l2_table", "L2_TABLE", "orderBookL2", _choice(L2_TABLE_CHOICES), "L2 table to subscribe"),
    Setting("stream_maxlen", "STREAM_MAXLEN", "100000", _int(1),
            "approximate MAXLEN of every stream (trimming loss is detected, never silent)"),
    Setting("flush_interval", "FLUSH_INTERVAL", "0.25", _seconds,
            "seconds between coalesced MongoDB writes per symbol"),
    Setting("metrics_host", "METRICS_HOST", "0.0.0.0", str, "address of the /healthz and /metrics server"),
    Setting("metrics_port", "METRICS_PORT", "9100", _port,
            "port of the /healthz and /metrics server (0 = serve nothing)"),
    Setting("log_level", "LOG_LEVEL", "INFO", _choice(LOG_LEVELS, str.upper), "log level"),
    Setting("instance_name", "INSTANCE_NAME", "", lambda raw: _name(raw) if raw else "",
            "name of this instance in consumer groups and leases (default: host-pid)"),
    Setting("ingest_buffer_frames", "INGEST_BUFFER_FRAMES", "200000", _int(1),
            "frames ingest holds in memory while Redis is slow or down before it stops reading"),
    Setting("resubscribe_interval", "RESUBSCRIBE_INTERVAL", "5", _seconds,
            "minimum seconds between two forced resubscriptions of one symbol"),
    Setting("claim_idle", "CLAIM_IDLE", "10", _seconds,
            "seconds an entry stays pending with a dead consumer before another claims it"),
    Setting("lease_ttl", "LEASE_TTL", "6", _seconds, "l2builder symbol lease time-to-live in seconds"),
    Setting("consumer_expiry", "CONSUMER_EXPIRY", "60", _seconds,
            "seconds a consumer-group member may stay idle, owning no pending entry, before it is removed"),
    Setting("health_stale_after", "HEALTH_STALE_AFTER", "10", _seconds,
            "seconds disconnected (ingest) or unable to reach a server before /healthz fails"),
    Setting("timestamp_tolerance", "TIMESTAMP_TOLERANCE", "5", _seconds,
            "seconds an exchange timestamp may lead its receive time (top10 orders a frame stamped further "
            "ahead by its receive time, and replaces a stored timestamp further ahead of Redis's clock)"),
    Setting("retry_after_max", "RETRY_AFTER_MAX", "300", _seconds,
            "longest wait, in seconds, ingest grants a venue's HTTP 429 Retry-After or rate-limit error frame"),
)

SETTINGS_BY_ENV: Mapping[str, Setting] = {setting.env: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The parsed configuration of one process."""

    redis_url: str
    mongo_url: str
    mongo_database: str
    ws_url: str
    symbols: tuple[str, ...]
    key_prefix: str
    l2_table: str
    stream_maxlen: int
    flush_interval: float
    metrics_host: str
    metrics_port: int
    log_level: str
    instance_name: str
    ingest_buffer_frames: int
    resubscribe_interval: float
    claim_idle: float
    lease_ttl: float
    consumer_expiry: float
    health_stale_after: float
    timestamp_tolerance: float
    retry_after_max: float

    def describe(self) -> dict[str, Any]:
        """All values with secrets masked, for the start-up log line and `status`."""
        shown: dict[str, Any] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.field)
            shown[setting.field] = mask_url(value) if setting.secret_url else value
        return shown


def add_settings_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per setting; a flag given on the command line wins over the environment.

    `exclude` names settings (by field) whose flag a subcommand defines itself with another meaning,
    e.g. `bookstream exchange --symbols 50`.
    """
    group = parser.add_argument_group("settings (each also read from the environment variable shown)")
    for setting in SETTINGS:
        if setting.field in exclude:
            continue
        group.add_argument(setting.flag, dest=f"setting_{setting.field}", metavar=setting.env,
                           default=None, help=f"{setting.help} [env {setting.env}, default {setting.default!r}]")


def load_settings(args: argparse.Namespace | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from flags, then the environment, then defaults; raise ConfigError on a bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, f"setting_{setting.field}", None) if args is not None else None
        source = setting.flag
        if raw is None:
            raw, source = env.get(setting.env), setting.env
        if raw is None:
            raw, source = setting.default, setting.env
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            shown = mask_url(raw) if setting.secret_url else raw
            raise ConfigError(f"{source}={shown!r}: {exc}") from None
    if not values["instance_name"]:
        values["instance_name"] = f"{socket.gethostname()}-{os.getpid()}"
    return Settings(**values)

