"""Settings: environment, flags that override it, validation that names the variable, masked secrets."""

from __future__ import annotations

import argparse

import pytest

from services.runtime.config import (
    LOCAL_EXCHANGE_WS_URL,
    SERVICE_SETTINGS,
    SETTINGS,
    ConfigError,
    add_settings_arguments,
    load_settings,
    mask_url,
)


def parse(argv: list[str], service: str = "l2builder") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, service)
    return parser.parse_args(argv)


def test_defaults() -> None:
    settings = load_settings(parse([], "ingest"), environ={})
    assert settings.ws_url == LOCAL_EXCHANGE_WS_URL
    assert settings.key_prefix == "bitmex"
    assert settings.mongo_database == "bitmex"
    assert settings.symbols == ("XBTUSD",)
    assert settings.flush_interval == 0.25
    assert settings.instance_name  # derived from host and pid


def test_environment_then_flag_override() -> None:
    env = {"SYMBOLS": "XBTUSD, ETHUSD,XBTUSD", "METRICS_PORT": "0", "FLUSH_INTERVAL": "1.5"}
    settings = load_settings(parse([], "ingest"), environ=env)
    assert settings.symbols == ("XBTUSD", "ETHUSD")  # trimmed, de-duplicated, order kept
    assert settings.metrics_port == 0
    assert load_settings(parse([]), environ=env).flush_interval == 1.5
    overridden = load_settings(parse(["--symbols", "SOLUSD", "--metrics-port", "9200"], "ingest"), environ=env)
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
        ({"REDIS_URL": "http://host"}, "REDIS_URL", "redis+cluster"),
        ({"REDIS_URL": "redis+cluster:///"}, "REDIS_URL", "at least one node"),
        ({"REDIS_URL": "redis+cluster://h1:7000,h2:99999/"}, "REDIS_URL", "not a valid URL"),
        ({"REDIS_URL": "redis+cluster://h1:7000/2"}, "REDIS_URL", "database 0"),
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
        load_settings(None, environ=env)
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert problem in message
    assert "\n" not in message


def test_invalid_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--symbols="):
        load_settings(parse(["--symbols", "bad symbol"], "ingest"), environ={})


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


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
    ("mongodb://:s3cret@db", "mongodb://:***@db"),
    ("redis://s3cret@host:6379", "redis://***@host:6379"),  # a lone userinfo is often a token
    ("redis://host/0?password=s3cret", "redis://host/0?password=***"),
    ("rediss://host:6380/0?ssl_cert_reqs=none&PassWord=s3cret", "rediss://host:6380/0?ssl_cert_reqs=none&PassWord=***"),
    ("redis://user:pa/s3cret@host/0", "redis://user:***@host/0"),          # raw '/' in the password
    ("redis://user:pa?s3cret@host/0", "redis://user:***@host/0"),          # raw '?' in the password
    ("mongodb://u:p@s3cret@h1/db", "mongodb://u:***@h1/db"),               # raw '@' in the password
    ("mongodb://u:s3cret@h1:27017,h2:27017/?replicaSet=rs", "mongodb://u:***@h1:27017,h2:27017/?replicaSet=rs"),
    ("mongodb+srv://u:s3cret@cluster0.example.net/db?retryWrites=true&authSource=admin",
     "mongodb+srv://u:***@cluster0.example.net/db?retryWrites=true&authSource=admin"),
    ("wss://venue/realtime?api-expires=1700000000&api-key=s3cret&api-signature=s3cret2",
     "wss://venue/realtime?api-expires=1700000000&api-key=***&api-signature=***"),
    ("ws://h/x?token=s3cret;pwd=s3cret&pass=s3cret&secret=s3cret&auth=s3cret&access_key=s3cret&sig=s3cret",
     "ws://h/x?token=***;pwd=***&pass=***&secret=***&auth=***&access_key=***&sig=***"),
    ("wss://h/x?X-Amz-Signature=s3cret&X-Amz-Credential=s3cret#access_token=s3cret",
     "wss://h/x?X-Amz-Signature=***&X-Amz-Credential=***#access_token=***"),
    ("mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:s3cret",
     "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
    ("unix:/run/redis.sock?Api%2DKey=s3cret", "unix:/run/redis.sock?Api%2DKey=***"),
    ("redis://host:6379", "redis://host:6379"),
    ("mongodb://h1,h2/?replicaSet=rs&authSource=admin", "mongodb://h1,h2/?replicaSet=rs&authSource=admin"),
])
def test_mask_url_hides_every_credential_shape(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)


@pytest.mark.parametrize(("variable", "raw", "problem"), [
    ("REDIS_URL", "redis://user:pa/ss55word@host/0", "raw '/'"),
    ("REDIS_URL", "redis://user:ss55word@host:bad/0", "port"),
    ("REDIS_URL", "redis://host:bad/0?password=ss55word", "port"),
    ("BITMEX_WS_URL", "wss://venue:bad/realtime?api-key=ss55word", "port"),
    ("MONGO_CONNECTION_STRING", "mongodb://u:p@ss55word@h/db", "escaped"),
    ("MONGO_CONNECTION_STRING", "mongodb://u:pa/ss55word@h/db", "raw '/'"),
    ("MONGO_CONNECTION_STRING", "mongodb://u:ss55word@h:bad/db", "MongoDB"),
    ("MONGO_CONNECTION_STRING", "mongodb+srv://u:ss55word@cluster0.example.net:27017/db", "port"),
    ("MONGO_CONNECTION_STRING", "mongodb+srv://u:ss55word@a.example.net,b.example.net/db", "one"),
    ("MONGO_CONNECTION_STRING", "mongodb://h/?replicaSet=rs&apiToken=ss55word", "Unknown option"),
    ("MONGO_CONNECTION_STRING", "mongodb://u:ss55word@h/?tls=true&tlsCAFile=/nonexistent/ca.pem", "not readable"),
])
def test_configuration_errors_never_echo_a_secret(variable: str, raw: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable}=") and "\n" not in message
    assert problem in message
    assert "ss55" not in message


@pytest.mark.parametrize("uri", [
    "mongodb://u:p%40ss@h1:27017,h2:27017,h3:27017/bitmex?replicaSet=rs&authSource=admin",
    "mongodb://h1,h2/?replicaSet=rs&readPreference=secondaryPreferred",
    # Not resolvable: accepting it proves the check reads the syntax and leaves DNS to the driver.
    "mongodb+srv://user:secret@cluster0.does-not-exist.invalid/bitmex?retryWrites=true&w=majority",
    "mongodb://%2Ftmp%2Fmongodb-27017.sock",
])
def test_uris_of_real_deployments_are_accepted(uri: str) -> None:
    assert load_settings(None, environ={"MONGO_CONNECTION_STRING": uri}).mongo_url == uri


def test_each_service_reads_only_its_settings() -> None:
    env = {"MONGO_CONNECTION_STRING": "not a url", "BITMEX_WS_URL": "http://x", "REDIS_URL": "redis://r:1/0"}
    top10 = load_settings(parse([], "top10"), environ=env)  # the invalid MongoDB and venue URLs are not its own
    assert top10.redis_url == "redis://r:1/0"
    assert set(top10.describe("top10")) == set(SERVICE_SETTINGS["top10"])
    assert not {"mongo_url", "ws_url", "mongo_database"} & set(top10.describe("top10"))
    assert "redis_url" not in load_settings(parse([], "exchange"), environ=env).describe("exchange")
    with pytest.raises(ConfigError, match=r"^MONGO_CONNECTION_STRING="):
        load_settings(parse([], "l2builder"), environ=env)


def test_servers_listen_on_loopback_and_a_port_per_service_by_default() -> None:
    ports = {service: load_settings(parse([], service), environ={}).metrics_port
             for service in ("exchange", "ingest", "top10", "l2builder")}
    assert ports == {"exchange": 9100, "ingest": 9101, "top10": 9102, "l2builder": 9103}
    assert load_settings(parse([], "ingest"), environ={}).metrics_host == "127.0.0.1"
    assert load_settings(parse([], "ingest"), environ={"METRICS_PORT": "9300"}).metrics_port == 9300


def test_every_setting_is_read_by_some_subcommand() -> None:
    """A setting no subcommand lists keeps its default everywhere: it would be documented but dead."""
    used = {field for fields in SERVICE_SETTINGS.values() for field in fields}
    assert {setting.field for setting in SETTINGS} - used == set()


@pytest.mark.parametrize("url", ["redis+cluster://h1:7000,h2:7001/", "rediss+cluster://u:pw@h1:7000/0?ssl_cert_reqs=none",
                                 "redis+cluster://h1:7000"])
def test_a_cluster_is_named_by_its_seed_nodes(url: str) -> None:
    assert load_settings(None, environ={"REDIS_URL": url}).redis_url == url


def test_a_bad_cluster_url_is_one_line_with_the_password_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"REDIS_URL": "rediss+cluster://u:s3cret@h1:7000,h2:bad/"})
    message = str(caught.value)
    assert message.startswith("REDIS_URL='rediss+cluster://u:***@h1:7000,h2:bad/'") and "port" in message
    assert "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("service", ["ingest", "top10", "l2builder", "status"])
def test_every_service_takes_a_cluster(service: str) -> None:
    url = "redis+cluster://h1:7000,h2:7001/"
    assert load_settings(parse([], service), environ={"REDIS_URL": url}).redis_url == url
