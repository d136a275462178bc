"""The docs stay complete: every setting, reason code, CLI command and health field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel
from starlette.testclient import TestClient

from hopper.cli import app
from hopper.config import HopperSettings
from hopper.edge import create_app
from hopper.events import RECORDED_REASONS, RejectReason
from hopper.testing import FrozenClock

DOCS = Path(__file__).resolve().parents[2] / "docs"
ZABBIX_TEMPLATE = DOCS / "zabbix" / "hopper_edge_template.yaml"
HEALTH_FIELDS = (
    "status",
    "ok",
    "store_ok",
    "pubsub_ok",
    "mqtt_ok",
    "disk_ok",
    "api_process_ok",
    "ec_import_ok",
    "queue_depth",
    "queue_bytes",
    "disk_free_bytes",
    "connections_open",
    "last_commit_age_s",
)


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _setting_names(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Yield the dotted name of every leaf setting (``store.backend``)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _setting_names(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _commands(command: Any = None, prefix: str = "hopper") -> Iterator[tuple[str, Any]]:
    """Yield (``hopper config check``, command) for every leaf command of the CLI."""
    # Typer vendors its own click, so groups are recognised by their ``commands``.
    command = typer.main.get_command(app) if command is None else command
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, f"{prefix} {name}")
    else:
        yield prefix, command


def test_the_walk_finds_nested_settings() -> None:
    names = set(_setting_names(HopperSettings))
    assert {"store.backend", "pipeline.edge.sources", "log.format"} <= names
    assert "pipeline.edge" not in names  # sections are walked, not listed


def test_every_setting_is_documented() -> None:
    text = _read("configuration.md")
    missing = [name for name in _setting_names(HopperSettings) if f"`{name}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_documented_settings_exist() -> None:
    names = set(_setting_names(HopperSettings))
    sections = {name.rpartition(".")[0] for name in names}
    text = _read("configuration.md")
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)+)` \|", text, flags=re.MULTILINE))
    assert documented, "no settings table found in docs/configuration.md"
    unknown = sorted(documented - names - sections)
    assert not unknown, f"docs/configuration.md documents settings the code lacks: {unknown}"


def test_setting_defaults_in_the_docs_match_the_code() -> None:
    text = _read("configuration.md")
    settings = HopperSettings.model_construct()  # the defaults, whatever HOPPER_* says
    for name in _setting_names(HopperSettings):
        row = re.search(rf"^\| `{re.escape(name)}` \|[^|]*\| ([^|]*) \|", text, re.MULTILINE)
        assert row is not None, f"no table row for {name}"
        value: Any = settings
        for part in name.split("."):
            value = getattr(value, part)
        if value is None or hasattr(value, "get_secret_value"):
            continue  # unset values and secrets are described in words
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, list):
            shown = "[" + ", ".join(f'"{i}"' if isinstance(i, str) else str(i) for i in value) + "]"
        assert shown in row.group(1).replace("`", ""), f"{name}: default {shown!r} not shown"


def test_every_reason_code_is_documented_with_whether_it_is_recorded() -> None:
    text = _read("events.md")
    for reason in RejectReason:
        row = re.search(rf"^\| `{reason.value}` \|.*\| ([^|]*) \|$", text, re.MULTILINE)
        assert row is not None, f"reason code {reason.value!r} missing from docs/events.md"
        recorded = not row.group(1).strip().lower().strip("*").startswith("no")
        assert recorded == (reason in RECORDED_REASONS), f"{reason.value}: recorded column wrong"


def test_every_cli_command_is_documented() -> None:
    text = _read("cli.md")
    paths = [path for path, _ in _commands()]
    assert {"hopper serve", "hopper job", "hopper config check"} <= set(paths)
    missing = [path for path in paths if f"`{path}" not in text]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_cli_option_is_documented() -> None:
    text = _read("cli.md")
    options = [
        opt
        for _, command in _commands()
        for param in command.params
        if param.param_type_name == "option"
        for opt in param.opts
    ]
    assert "--duration" in options
    missing = sorted({opt for opt in options if f"`{opt}" not in text})
    assert not missing, f"options missing from docs/cli.md: {missing}"


def test_every_health_field_is_documented(settings: HopperSettings) -> None:
    with TestClient(create_app(settings, clock=FrozenClock(), run_jobs=False)) as client:
        body = client.get("/health").json()
    assert set(HEALTH_FIELDS) <= set(body), "the Zabbix template reads fields /health lacks"
    # Parts the node does not run answer null (Zabbix discards it), not a failure.
    assert (body["mqtt_ok"], body["api_process_ok"], body["ec_import_ok"]) == (None, None, None)
    assert body["disk_ok"] == 1
    text = _read("operations.md")
    missing = [name for name in body if f"| `{name}` |" not in text]
    missing += [f"checks.{name}" for name in body["checks"] if f"| `{name}`" not in text]
    assert not missing, f"health fields missing from docs/operations.md: {missing}"


def test_zabbix_template_is_valid_yaml_with_the_health_items() -> None:
    yaml = pytest.importorskip("yaml")  # PyYAML is not a dependency; skip where it is absent
    export = yaml.safe_load(ZABBIX_TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    (template,) = export["templates"]
    items = {item["key"]: item for item in template["items"]}
    master = items["hopper.health"]
    assert master["type"] == "HTTP_AGENT"
    assert master["url"] == "{$HOPPER.URL}/health"
    assert master["status_codes"] == "200,503"
    for field in HEALTH_FIELDS:
        item = items[f"hopper.{field}"]
        assert item["type"] == "DEPENDENT"
        assert item["master_item"]["key"] == "hopper.health"
        step = item["preprocessing"][0]
        assert (step["type"], step["parameters"]) == ("JSONPATH", [f"$.{field}"])
    triggers = [t for item in template["items"] for t in item.get("triggers", [])]
    triggers += export.get("triggers", [])
    template_name = template["template"]
    for trigger in triggers:
        for host in re.findall(r"\(/([^/]+)/", trigger["expression"]):
            assert host == template_name, trigger["name"]
    expressions = " ".join(t["expression"] for t in triggers)
    for needle in (
        'hopper.status)="fail"',
        "hopper.store_ok)=0",
        "hopper.queue_depth",
        "hopper.last_commit_age_s",
        "hopper.disk_ok)=0",
        "hopper.api_process_ok)=0",
        "hopper.ec_import_ok)=0",
    ):
        assert needle in expressions
    uuids = [obj["uuid"] for obj in [template, *template["items"], *triggers]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uuids)
    assert len(set(uuids)) == len(uuids)


def test_zabbix_template_names_the_health_fields_without_yaml() -> None:
    # A structural check that runs everywhere, PyYAML or not.
    text = ZABBIX_TEMPLATE.read_text(encoding="utf-8")
    assert text.startswith("#") and "\nzabbix_export:\n" in text
    assert "\t" not in text
    assert "status_codes: '200,503'" in text
    for field in HEALTH_FIELDS:
        assert f"- $.{field}\n" in text


def test_the_example_worker_config_is_sound() -> None:
    from hopper.config import load_settings
    from hopper.pipeline import check_topologies

    settings = load_settings(DOCS / "examples" / "central.toml")
    assert check_topologies(settings) == []
    central = settings.pipeline.topologies()["central"]
    assert central.sources == ["topic:edge-events"] and central.sinks == ["store"]
