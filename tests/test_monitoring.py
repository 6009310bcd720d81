"""monitoring/: the Prometheus scrape config, the alert rules and the Grafana dashboard, checked against the
compose file and against the metrics the running services really export on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from testkit.harness import free_port, wait_until
from tests.conftest import RunService

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
SERVICES = ("exchange", "ingest", "top10", "l2builder")
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every target."""
ADDED_BY_PROMETHEUS = {"job", "instance"}
SAMPLE_LABEL = re.compile(r'(\w+)="')


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def expressions() -> list[str]:
    """Every PromQL expression shipped: the alert rules', then the dashboard panels'."""
    panels = [panel for panel in dashboard()["panels"] if panel["type"] != "row"]
    return [rule["expr"] for rule in alert_rules()] + [target["expr"] for panel in panels
                                                       for target in panel["targets"]]


def selectors_and_groupings(expression: str) -> tuple[list[tuple[str, set[str]]], list[tuple[set[str], set[str]]]]:
    """`([(metric, labels matched)], [(labels grouped by, metrics aggregated)])` of a PromQL expression;
    raises ValueError when it does not parse."""
    selectors: list[tuple[str, set[str]]] = []
    groupings: list[tuple[set[str], set[str]]] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            selectors.append((node.name, {matcher.name for matcher in node.matchers.matchers}))
        elif (isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None
              and node.modifier.type == promql_parser.AggModifierType.By):
            inner, _ = selectors_and_groupings(node.expr.prettify())
            groupings.append((set(node.modifier.labels), {name for name, _ in inner}))
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return selectors, groupings


class Exported:
    """The series names and label names the services expose, read from their /metrics text."""

    def __init__(self, texts: list[str]) -> None:
        self.series: set[str] = set(PROMETHEUS_OWN)
        self.labels: dict[str, set[str]] = {}
        for text in texts:
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split()
                    suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
                    self.series.update(name + suffix for suffix in suffixes)
                elif line and not line.startswith("#"):
                    name, _, rest = line.partition("{")
                    self.labels.setdefault(name.split()[0], set()).update(SAMPLE_LABEL.findall(rest))

    def known_labels(self, name: str) -> set[str] | None:
        """The labels of a series, None when no sample shows them (a labelled metric not used yet)."""
        if name in PROMETHEUS_OWN:
            return None
        return self.labels[name] | ADDED_BY_PROMETHEUS if name in self.labels else None

    def problems(self, expression: str) -> list[str]:
        try:
            selectors, groupings = selectors_and_groupings(expression)
        except ValueError as exc:
            return [f"does not parse: {exc}"]
        found = []
        for name, matched in selectors:
            known = self.known_labels(name)
            if name not in self.series:
                found.append(f"{name} is not exported by any service")
            elif known is not None:
                found += [f"{name} has no label {label}" for label in sorted(matched - known)]
        for grouped, names in groupings:
            known_sets = [self.known_labels(name) for name in names if name in self.series]
            if known_sets and all(known is not None for known in known_sets):
                union = set().union(*(known for known in known_sets if known is not None))
                found += [f"{', '.join(sorted(names))} has no label {label} to group by"
                          for label in sorted(grouped - union)]
        return found


@pytest.fixture
def exported(run_service: RunService, service_env: dict[str, str]) -> Exported:
    """The /metrics of all four services, running on real servers with data flowing."""
    env = service_env
    port = free_port()
    processes = [run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", "XBTUSD",
                             "--rate", "200", env=env, name="exchange")]
    env = {**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime", "SYMBOLS": "XBTUSD"}
    processes += [run_service(name, env=env, name=name) for name in SERVICES[1:]]
    # Labelled series appear once used: wait for data to reach the end of the pipeline.
    wait_until(lambda: processes[3].metric("bookstream_l2builder_books", 'status="live"') > 0, 30, "a live book")
    wait_until(lambda: processes[2].metric("bookstream_top10_writes_total") > 0, 30, "a top-10 write")
    return Exported([process.metrics() for process in processes])


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(exported: Exported) -> None:
    problems = [f"{problem} (in {expression.strip()[:80]!r})" for expression in expressions()
                for problem in exported.problems(expression)]
    assert problems == []
    used = {name for expression in expressions() for name, _ in selectors_and_groupings(expression)[0]}
    assert {"bookstream_ingest_connected", "bookstream_l2builder_lag_entries", "bookstream_top10_writes_total",
            "bookstream_l2builder_books"} <= used
    # and the check would notice a wrong name or label
    assert exported.problems("rate(bookstream_ingest_reconects_total[1m])") == [
        "bookstream_ingest_reconects_total is not exported by any service"]
    assert exported.problems('bookstream_ingest_topics{sate="subscribed"}') == ["bookstream_ingest_topics has no "
                                                                                 "label sate"]
    assert exported.problems('bookstream_ingest_topics{state="subscribed", job="ingest"}') == []
    assert exported.problems("sum by (stauts) (bookstream_l2builder_books)") == [
        "bookstream_l2builder_books has no label stauts to group by"]
    assert exported.problems("sum(rate(bookstream_ingest_pings_total[1m])") == [
        "does not parse: unclosed left parenthesis"]


def test_alert_rules_cover_the_documented_failure_modes() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"BookstreamServiceDown", "BookstreamIngestDisconnected", "BookstreamIngestReconnectStorm",
            "BookstreamIngestNoTopicSubscribed", "BookstreamIngestRedisDown", "BookstreamBookStale",
            "BookstreamL2LagHigh", "BookstreamNoL2Owner", "BookstreamMongoUnreachable",
            "BookstreamTop10RedisErrors", "BookstreamL2RedisErrors", "BookstreamTop10NotWriting"} <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))), rule["alert"]
        promql_parser.parse(rule["expr"])


def test_prometheus_scrapes_every_compose_service_where_it_serves_metrics() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name, job in jobs.items():
        environment = compose["services"][name]["environment"]
        (discovery,) = job["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["type"] == "A", "every replica of a scaled service"
        assert discovery["port"] == int(environment["METRICS_PORT"]), name
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["prometheus"]["volumes"])
    assert mounts["./monitoring/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [mounts["./monitoring/alerts.yml"]]
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"], "not started by a plain `up`"


def test_grafana_dashboard_is_well_formed_and_provisioned() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    (variable,) = board["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert all(target["expr"] and target["refId"] for target in panel["targets"]), panel["title"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in compose["volumes"])
    provider = yaml.safe_load((MONITORING / "grafana/dashboards.yml").read_text())["providers"][0]
    assert Path(mounts["./monitoring/grafana-dashboard.json"]).parent == Path(provider["options"]["path"])
    source = yaml.safe_load((MONITORING / "grafana/datasource.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
