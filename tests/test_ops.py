"""The operations kit: the Grafana dashboard and the Prometheus alert rules read metrics the
sidecar exports, with labels whose values are bounded, and the rules pass their unit tests."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from semcache.budgets import parse_budgets
from semcache.pricing import Price, PriceTable
from tests.fake_openai import FakeOpenAI
from tests.sidecar import Sidecar
from tests.test_upstreams import chat, pool, sidecar_with

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_JSON = ROOT / "deploy" / "grafana" / "semcache.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bsemcache_[a-z0-9_]+\b")


def dashboard_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy/grafana/dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboard"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dashboard_queries() -> list[str]:
    return list(dashboard_module().queries(json.loads(DASHBOARD_JSON.read_text())))


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_dashboard_json_is_what_its_code_generates() -> None:
    assert DASHBOARD_JSON.read_text() == dashboard_module().render() + "\n", (
        "regenerate it: python deploy/grafana/dashboard.py > deploy/grafana/semcache.json"
    )


def test_the_dashboard_decodes_with_the_sdks_models_of_grafanas_schema() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    document = json.loads(DASHBOARD_JSON.read_text())
    decoded = Dashboard.from_json(document)
    again = json.loads(JSONEncoder(sort_keys=True).encode(decoded))
    assert again == document  # nothing the schema does not know, nothing lost
    titles = [p["title"] for p in document["panels"] if p["type"] == "row"]
    assert titles == [
        "Traffic and outcomes", "Latency", "Cache", "Upstream keys", "Queue", "Budgets", "Errors",
    ]  # fmt: skip
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for query in dashboard_queries():
        assert 'instance=~"$instance"' in query  # every panel follows the sidecar picked


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_the_alert_rules_pass_promtool() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    tests = (ALERTS.parent / "alerts.test.yml").read_text()
    assert all(f"alertname: {name}" in tests for name in names), "every rule has a unit test"


def exported_names(exposition: str) -> set[str]:
    """Every sample name a scrape can hold, from the families' names and types (a labelled
    family that has seen nothing yet still says what it is)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
        "summary": ("", "_count", "_sum"),
    }
    return {
        family.name + suffix
        for family in text_string_to_metric_families(exposition)
        for suffix in suffixes.get(family.type, ("",))
    }


def series(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


async def traffic(sidecar: Sidecar, round_: str, caller: str) -> None:
    """One round of every kind of request: misses, exact hits, a stream missed and hit, by one
    caller key, with prompts no other round uses."""
    headers = {"Authorization": f"Bearer {caller}"}
    for question in (f"first {round_} question", f"second {round_} question"):
        for _ in range(2):
            status, _, _ = await chat(sidecar, question, headers)
            assert status == 200
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": f"stream {round_} please"}],
    }
    for _ in range(2):
        status, text, _ = await sidecar.post_stream(
            "/v1/chat/completions", orjson.dumps(body), headers
        )
        assert status == 200 and "[DONE]" in text


async def test_every_metric_the_dashboard_and_alerts_read_is_exported_with_bounded_labels(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    settings = {
        "budgets": parse_budgets(
            {"daily_usd": 100.0, "weekly_usd": 500.0, "lines": {}, "tenant_daily_usd": 10.0}
        ),
        "prices": PriceTable({"gpt-4o-mini": Price(1.0, 1.0)}),
        "max_error_rate": 0.05,
        "health_check_interval_s": 60,
    }
    table = pool(upstream, api_keys=["sk-pool-0", "sk-pool-1"], rpm=600, tpm=1_000_000)
    async with sidecar_with(tmp_path, upstream, [table], **settings) as sidecar:
        await traffic(sidecar, "alpha", "sk-caller-alpha")
        first = await sidecar.get_text("/metrics")
        await traffic(sidecar, "bravo", "sk-caller-bravo")
        second = await sidecar.get_text("/metrics")
    names = exported_names(second)
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        for query in queries:
            unknown = set(METRIC.findall(query)) - names
            assert not unknown, f"{source} queries {unknown}, which the sidecar does not export"
    # A second round of new prompts from a new caller adds no series: no label holds a value
    # that comes from a request (a prompt, a tenant, a key, an id).
    assert series(second) == series(first)
    values = {value for _, labels in series(second) for _, value in labels}
    for leaked in ("alpha", "bravo", "sk-caller", "sk-pool", "question", "key-"):
        assert not any(leaked in value for value in values), leaked
    # The panels that need traffic have it.
    streamed = 'endpoint="/v1/chat/completions",outcome="hit"'
    assert f"semcache_time_to_first_token_seconds_count{{{streamed}}}" in second
    assert "semcache_upstream_key_limit" in second and "semcache_false_hit_bound 0.05" in second


def compose_validator() -> list[str] | None:
    """``docker compose`` (the plugin) or Debian's ``docker-compose``: both check a file
    against the Compose specification without a daemon."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return None if legacy is None else [legacy]


@pytest.mark.skipif(compose_validator() is None, reason="apt-get install docker-compose")
@pytest.mark.parametrize("name", ["compose.monitoring.yml", "compose.scaleout.yml"])
def test_the_compose_files_are_valid(name: str) -> None:
    validator = compose_validator()
    assert validator is not None
    checked = subprocess.run(
        [*validator, "-f", str(ROOT / "deploy" / name), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_monitoring_stack_mounts_what_the_repo_holds(tmp_path: Path) -> None:
    """Every file the compose file mounts exists; Prometheus's config loads its rules; Grafana
    finds the dashboard where its provider looks."""
    deploy = ROOT / "deploy"
    stack = yaml.safe_load((deploy / "compose.monitoring.yml").read_text())["services"]
    mounts = {}
    for service in stack.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (deploy / source).exists(), source
                mounts[target] = deploy / source
    provider = yaml.safe_load((deploy / "grafana/provisioning/dashboards/semcache.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert any(target.startswith(folder + "/") for target in mounts), folder
    if shutil.which("promtool") is None:
        return
    config = yaml.safe_load((deploy / "prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(local)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
