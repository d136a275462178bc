from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hopper.cli import app
from hopper.config import load_settings
from hopper.errors import ConfigError
from hopper.store.migrations import MIGRATIONS

runner = CliRunner()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_check_accepts_the_defaults(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check"], env={"HOPPER_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert (
        "http + websocket -> decode -> authorize -> validate -> dedup -> store, protos, lp-events"
        in result.output
    )


def test_config_check_names_an_unknown_stage(tmp_path: Path) -> None:
    config = _write(tmp_path / "h.toml", '[pipeline.edge]\nstages = ["decode", "enrich"]\n')
    result = runner.invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown stage 'enrich'" in result.output


def test_config_check_refuses_a_topology_without_the_store(tmp_path: Path) -> None:
    config = _write(tmp_path / "h.toml", '[pipeline.edge]\nsinks = ["protos"]\n')
    result = runner.invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "'store' (the durable sink) is required" in result.output


def test_settings_come_from_toml_and_env_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(
        tmp_path / "h.toml", "[ingest]\nmax_clock_skew_secs = 60\nmax_body_bytes = 10\n"
    )
    monkeypatch.setenv("HOPPER_INGEST__MAX_BODY_BYTES", "20")
    settings = load_settings(config)
    assert settings.ingest.max_clock_skew_secs == 60
    assert settings.ingest.max_body_bytes == 20


def test_invalid_setting_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPPER_STORE__BACKEND", "oracle")
    with pytest.raises(ConfigError, match="store.backend"):
        load_settings()


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_config_show_masks_secrets() -> None:
    result = runner.invoke(
        app,
        ["config", "show"],
        env={"HOPPER_STORE__POSTGRES_URL": "postgresql://u:hunter2@127.0.0.1/db"},
    )
    assert result.exit_code == 0
    assert "hunter2" not in result.output
    assert orjson.loads(result.output)["store"]["backend"] == "sqlite"


def test_migrate_and_purge_errors_job_run_from_the_command_line(tmp_path: Path) -> None:
    env = {"HOPPER_STORE__SQLITE_PATH": str(tmp_path / "e.db")}
    result = runner.invoke(app, ["migrate"], env=env)
    assert result.exit_code == 0
    assert f"Applied {len(MIGRATIONS)} migration(s)" in result.output
    assert "Applied 0 migration(s)" in runner.invoke(app, ["migrate"], env=env).output
    result = runner.invoke(app, ["job", "purge-errors"], env=env)
    assert result.exit_code == 0
    assert "deleted 0 rows" in result.output


def test_unknown_job_is_refused() -> None:
    result = runner.invoke(app, ["job", "nope"])
    assert result.exit_code == 2
    assert "purge-errors" in result.output


def test_config_check_names_an_unknown_lp_event_type(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "h.toml", '[pubsub]\nlp_events_types = ["page_viewed", "pageview"]\n'
    )
    result = runner.invoke(app, ["config", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown event type 'pageview'" in result.output


def test_token_create_list_revoke(tmp_path: Path) -> None:
    env = {"HOPPER_STORE__SQLITE_PATH": str(tmp_path / "e.db")}
    created = runner.invoke(
        app,
        ["token", "create", "--name", "tablets", "--scope", "ingest", "--school", "s1"],
        env=env,
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("hop_")
    token_id, secret = token[4:].split("_", 1)
    listed = runner.invoke(app, ["token", "list"], env=env)
    assert listed.exit_code == 0
    assert token_id in listed.output and "tablets" in listed.output and "s1" in listed.output
    assert secret not in listed.output
    assert runner.invoke(app, ["token", "revoke", token_id], env=env).exit_code == 0
    again = runner.invoke(app, ["token", "revoke", token_id], env=env)
    assert again.exit_code == 1 and "no active token" in again.output


def test_token_create_refuses_an_unknown_scope(tmp_path: Path) -> None:
    env = {"HOPPER_STORE__SQLITE_PATH": str(tmp_path / "e.db")}
    result = runner.invoke(app, ["token", "create", "--name", "x", "--scope", "root"], env=env)
    assert result.exit_code == 2
    assert "unknown scope(s) root" in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://hopper:s3cret@[::1/test",  # malformed: quoted back by libpq
        "postgresql://:s3cret@127.0.0.1:1/test",  # no user name
        "host=127.0.0.1 port=1 user=hopper password=s3cret",  # key=value form
    ],
)
def test_start_up_errors_never_print_the_password(url: str) -> None:
    env = {"HOPPER_STORE__BACKEND": "postgres", "HOPPER_STORE__POSTGRES_URL": url}
    result = runner.invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "s3cret" not in result.output
