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
from urllib.parse import unquote_plus, urlsplit

from pymongo.errors import PyMongoError
from pymongo.uri_parser_shared import _validate_uri

from services.core.bookdoc import DEFAULT_TOP_LEVELS
from services.core.keys import SYMBOL_PATTERN
from services.core.slots import CLUSTER_SCHEMES, cluster_node_urls, is_cluster_url

LOCAL_EXCHANGE_WS_URL = "ws://127.0.0.1:8080/realtime"
"""Where `bookstream exchange` listens by default: BitMEX closed its venue on 2026-09-23, so the project's own
BitMEX-protocol server is the default source, and the two run side by side on one host without a setting."""
L2_TABLE_CHOICES = ("orderBookL2", "orderBookL2_25")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the variable and the problem."""


# A query (or fragment) parameter whose name, lower-cased without separators, ends with one of these holds
# a credential: `password`, `api-key`, `access_key`, `X-Amz-Signature`, `sig` (SAS), `token`, `oauth`...
_CREDENTIAL_SUFFIXES = ("password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "key", "signature",
                        "sig", "auth", "authorization", "credential", "credentials", "authmechanismproperties")
_PARAMETER = re.compile(r"([?&;#])([^=&;#]*)=([^&;#]*)")
_NAME_SEPARATORS = str.maketrans("", "", "-_. ")
MASK = "***"


def _credential_name(name: str) -> bool:
    return unquote_plus(name).lower().translate(_NAME_SEPARATORS).endswith(_CREDENTIAL_SUFFIXES)


def _userinfo_end(rest: str) -> int:
    """Index of the `@` that ends the userinfo of `rest` (the URL after `scheme://`), or -1.

    Errs towards masking: a password with a raw `/` or `?` moves the `@` past where a parser sees the host
    end, so the last `@` before the query counts, or else the last `@` of all.
    """
    query = rest.find("?")
    end = rest.rfind("@", 0, query if query >= 0 else len(rest))
    return end if end >= 0 else rest.rfind("@")


def mask_url(url: str) -> str:
    """`url` with its password (or a lone userinfo, often a token) and credential parameters as `***`.

    Safe to print in logs, errors and status. Works on the text rather than a parsed URL, so even a URL too
    malformed to parse (a raw `/`, `@` or `?` in the password) is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _PARAMETER.sub(_mask_parameter, url)
    at = _userinfo_end(rest)
    shown = scheme + sep
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        shown += f"{user}:{MASK}@" if colon else f"{MASK}@"
        rest = rest[at + 1:]
    return shown + _PARAMETER.sub(_mask_parameter, rest)


def _mask_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    return f"{separator}{name}={MASK if value and _credential_name(name) else value}"


def _secrets(url: str) -> list[str]:
    """The secret parts of `url` as written and decoded, longest first: what an error message must not show."""
    found: list[str] = []
    _scheme, sep, rest = url.partition("://")
    at = _userinfo_end(rest) if sep else -1
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        found.append(password if colon else user)
    found.extend(value for _sep, name, value in _PARAMETER.findall(url) if _credential_name(name))
    found.extend([unquote_plus(secret) for secret in found])
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """`text` (a parser's error message, say) with every secret of `url` replaced by `***`."""
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


def _check_userinfo(raw: str) -> None:
    _scheme, _sep, rest = raw.partition("://")
    if any(char in rest[:max(_userinfo_end(rest), 0)] for char in "/?#"):
        raise ValueError("not a valid URL: the user name or password holds a raw '/', '?' or '#'; "
                         "percent-encode it (%2F, %3F, %23)")


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        # The parsers' own messages quote pieces of the URL (a password cut at a raw `/` becomes the "port"),
        # so these messages are written here and never repeat the input.
        try:
            parts = urlsplit(raw)
        except ValueError:
            raise ValueError("not a valid URL (unbalanced [ ] around an IPv6 address)") from None
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}")
        _check_userinfo(raw)
        try:
            parts.port  # noqa: B018 - property access validates the port
        except ValueError:
            raise ValueError("not a valid URL: the port is not a number from 0 to 65535 (or the password holds "
                             "a raw reserved character: percent-encode it)") from None
        if not parts.hostname and not (parts.scheme == "unix" and parts.path):
            raise ValueError("URL has no host")
        return raw

    return parse


_redis_node_url = _url(("redis", "rediss", "unix"))


def _redis_url(raw: str) -> str:
    """One server (`redis://`, `rediss://`, `unix://`) or a cluster (`redis+cluster://h1:7000,h2:7001/`,
    `rediss+cluster://` for TLS): each of a cluster's seed nodes is checked as a one-server URL, and a
    cluster has only database 0."""
    if not is_cluster_url(raw):
        try:
            return _redis_node_url(raw)
        except ValueError as exc:
            if str(exc).startswith("scheme"):
                raise ValueError(f"scheme must be one of redis, rediss, unix, {', '.join(CLUSTER_SCHEMES)}") from None
            raise
    for node in cluster_node_urls(raw):
        parts = urlsplit(_redis_node_url(node))
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError("a cluster has only database 0 (end the URL with / or /0)")
    return raw


def _mongo_uri(raw: str) -> str:
    """Checked by the driver's own parser, replica-set host lists and `mongodb+srv://` included.

    `parse_uri` would resolve a `mongodb+srv://` name in DNS; `_validate_uri` is the syntax check it runs
    first (pymongo is pinned, and tests/unit/test_config.py holds this to both schemes).
    """
    if not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("scheme must be one of mongodb, mongodb+srv")
    _check_userinfo(raw)
    try:
        _validate_uri(raw, warn=False)
    except (PyMongoError, ValueError, OSError) as exc:  # OSError: a tlsCAFile (or key file) it cannot read
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"not a valid MongoDB connection string: {redact(first_line, raw)}") from None
    return raw


def _symbols(raw: str) -> tuple[str, ...]:
    names = [part.strip() for part in raw.split(",")]
    if not raw.strip():
        raise ValueError("symbol list is empty")
    for name in names:
        if not SYMBOL_PATTERN.fullmatch(name):
            raise ValueError(f"invalid symbol {name!r} (expected [A-Za-z0-9_.-]{{1,32}})")
    return tuple(dict.fromkeys(names))


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"not an integer: {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}, got {value}")
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
            _redis_url, "Redis server URL, or a cluster's seed nodes (redis+cluster://h1:7000,h2:7001/)",
            secret_url=True),
    Setting("mongo_url", "MONGO_CONNECTION_STRING", "mongodb://localhost:27017",
            _mongo_uri, "MongoDB connection string", secret_url=True),
    Setting("mongo_database", "MONGO_DATABASE", "bitmex", _prefix, "MongoDB database name"),
    Setting("ws_url", "BITMEX_WS_URL", LOCAL_EXCHANGE_WS_URL, _url(("ws", "wss")),
            "BitMEX realtime websocket URL (the live venue closed on 2026-09-23; point it at `bookstream exchange`)",
            secret_url=True),
    Setting("symbols", "SYMBOLS", "XBTUSD", _symbols, "comma-separated symbols to subscribe"),
    Setting("key_prefix", "KEY_PREFIX", "bitmex", _prefix, "prefix of every Redis key"),
    Setting("l2_table", "L2_TABLE", "orderBookL2", _choice(L2_TABLE_CHOICES), "L2 table to subscribe"),
    Setting("stream_maxlen", "STREAM_MAXLEN", "100000", _int(1),
            "approximate MAXLEN of every stream (trimming loss is detected, never silent)"),
    Setting("flush_interval", "FLUSH_INTERVAL", "0.25", _seconds,
            "seconds between coalesced MongoDB writes per symbol"),
    Setting("book_top_levels", "BOOK_TOP_LEVELS", str(DEFAULT_TOP_LEVELS), _int(1, 1000),
            "best levels per side in a MongoDB book's bids/asks arrays, 1..1000 (every level is in its levels map)"),
    Setting("metrics_host", "METRICS_HOST", "127.0.0.1", str,
            "address of the /healthz and /metrics server (0.0.0.0 to be scraped from other hosts)"),
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

_SERVER = ("metrics_host", "metrics_port", "log_level")
_CONSUMER = ("redis_url", "key_prefix", "instance_name", "consumer_expiry", "health_stale_after", *_SERVER)
SERVICE_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "exchange": ("symbols", *_SERVER),
    "ingest": ("redis_url", "ws_url", "symbols", "key_prefix", "l2_table", "stream_maxlen", "ingest_buffer_frames",
               "resubscribe_interval", "instance_name", "health_stale_after", "retry_after_max", *_SERVER),
    "top10": (*_CONSUMER, "claim_idle", "timestamp_tolerance"),
    "l2builder": (*_CONSUMER, "mongo_url", "mongo_database", "flush_interval", "book_top_levels", "lease_ttl",
                  "resubscribe_interval"),
    "status": ("redis_url", "mongo_url", "mongo_database", "key_prefix", "claim_idle", "health_stale_after"),
}
"""The settings each subcommand reads: its `--help` lists these, its start-up line shows these, the others
keep their defaults whatever the environment says (compose shares one environment block between services)."""
SERVICE_DEFAULTS: Mapping[str, Mapping[str, str]] = {
    # One port each, so the services run side by side on one host without a setting.
    "ingest": {"metrics_port": "9101"}, "top10": {"metrics_port": "9102"}, "l2builder": {"metrics_port": "9103"},
}


def _default(setting: Setting, service: str | None) -> str:
    return SERVICE_DEFAULTS.get(service or "", {}).get(setting.field, setting.default)


def _used(setting: Setting, service: str | None) -> bool:
    return service is None or setting.field in SERVICE_SETTINGS[service]


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
    book_top_levels: int
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

    def describe(self, service: str | None = None) -> dict[str, Any]:
        """The values `service` uses (all without one), secrets masked, for the start-up line and `status`."""
        shown: dict[str, Any] = {}
        for setting in SETTINGS:
            if _used(setting, service):
                value = getattr(self, setting.field)
                shown[setting.field] = mask_url(value) if setting.secret_url else value
        return shown


def add_settings_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    """Add one flag per setting `service` uses; a flag given on the command line wins over the environment."""
    parser.set_defaults(settings_service=service)
    group = parser.add_argument_group("settings (each also read from the environment variable shown)")
    for setting in SETTINGS:
        if not _used(setting, service):
            continue
        group.add_argument(setting.flag, dest=f"setting_{setting.field}", metavar=setting.env, default=None,
                           help=f"{setting.help} [env {setting.env}, default {_default(setting, service)!r}]")


def load_settings(args: argparse.Namespace | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from flags, then the environment, then defaults; raise ConfigError on a bad value.

    With `args` of a subcommand (see `add_settings_arguments`), a setting it does not use keeps its default.
    """
    env = os.environ if environ is None else environ
    service: str | None = getattr(args, "settings_service", None)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, f"setting_{setting.field}", None) if args is not None else None
        source = setting.flag
        if raw is None and _used(setting, service):
            raw, source = env.get(setting.env), setting.env
        if raw is None:
            raw, source = _default(setting, service), setting.env
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            shown = mask_url(raw) if setting.secret_url else raw
            raise ConfigError(f"{source}={shown!r}: {exc}") from None
    if not values["instance_name"]:
        values["instance_name"] = f"{socket.gethostname()}-{os.getpid()}"
    return Settings(**values)

