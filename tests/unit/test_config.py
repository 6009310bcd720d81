"""Settings: environment, flags that override it, validation that names the variable, masked secrets."""

from __future__ import annotations

import argparse

import pytest

from services.common.config import (
    LIVE_WS_URL,
    SETTINGS,
    ConfigError,
    add_settings_arguments,
    load_settings,
    mask_url,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    settings = load_settings(parse([]), environ={})
    assert settings.ws_url == LIVE_WS_URL
    assert settings.key_prefix == "bitmex"
    assert settings.mongo_database == "bitmex"
    assert settings.symbols == ("XBTUSD",)
    assert settings.flush_interval == 0.25
    assert settings.instance_name  # derived from host and pid


def test_environment_then_flag_override() -> None:
    env = {"SYMBOLS": "XBTUSD, ETHUSD,XBTUSD", "METRICS_PORT": "0", "FLUSH_INTERVAL": "1.5"}
    settings = load_settings(parse([]), environ=env)
    assert settings.symbols == ("XBTUSD", "ETHUSD")  # trimmed, de-duplicated, order kept
    assert settings.metrics_port == 0
    assert settings.flush_interval == 1.5
    overridden = load_settings(parse(["--symbols", "SOLUSD", "--metrics-port", "9200"]), environ=env)
    assert overridden.symbols == ("SOLUSD",)
    assert overridden.metrics_port == 9200


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"SYMBOLS": ""}, "SYMBOLS", "empty"),
        ({"SYMBOLS": "XBTUSD,,ETHUSD"}, "SYMBOLS", "invalid symbol"),
        ({"SYMBOLS": "XBT USD"}, "SYMBOLS", "invalid symbol"),
        ({"SYMBOLS": "A" * 33}, "SYMBOLS", "invalid symbol"),
        ({"REDIS_URL": "notaurl"}, "REDIS_URL", "scheme"),
        ({"REDIS_URL": "redis://host:99999"}, "REDIS_URL", "not a valid URL"),
        ({"MONGO_CONNECTION_STRING": "http://x"}, "MONGO_CONNECTION_STRING", "scheme"),
        ({"BITMEX_WS_URL": "ws://"}, "BITMEX_WS_URL", "no host"),
        ({"FLUSH_INTERVAL": "-1"}, "FLUSH_INTERVAL", ">= 0"),
        ({"FLUSH_INTERVAL": "nan"}, "FLUSH_INTERVAL", ">= 0"),
        ({"STREAM_MAXLEN": "0"}, "STREAM_MAXLEN", ">= 1"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT", "port"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "must be one of"),
        ({"L2_TABLE": "trade"}, "L2_TABLE", "must be one of"),
        ({"KEY_PREFIX": "a b"}, "KEY_PREFIX", "invalid key prefix"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(parse([]), environ=env)
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert problem in message
    assert "\n" not in message


def test_invalid_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--symbols="):
        load_settings(parse(["--symbols", "bad symbol"]), environ={})


def test_passwords_are_masked() -> None:
    assert mask_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("mongodb://:pw@db") == "mongodb://:***@db"
    assert mask_url("redis://host:6379") == "redis://host:6379"
    settings = load_settings(parse([]), environ={"REDIS_URL": "redis://u:topsecret@r:6379/0",
                                                 "MONGO_CONNECTION_STRING": "mongodb://u:hunter2@m:27017"})
    assert "topsecret" not in str(settings.describe())
    assert "hunter2" not in str(settings.describe())
    with pytest.raises(ConfigError) as caught:
        load_settings(parse([]), environ={"REDIS_URL": "http://u:topsecret@r:6379/0"})
    assert "topsecret" not in str(caught.value)


def test_every_setting_has_a_distinct_variable_and_flag() -> None:
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert len({s.flag for s in SETTINGS}) == len(SETTINGS)
