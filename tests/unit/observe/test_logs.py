from __future__ import annotations

import logging

import pytest

from hopper.observe.logs import RedactingFilter, redact


def test_credentials_in_urls_are_masked() -> None:
    assert redact("connect postgresql://hopper:s3cret@db:5432/x") == (
        "connect postgresql://***:***@db:5432/x"
    )


def test_tokens_passwords_and_usernames_are_masked() -> None:
    text = redact("token=abc123 password: hunter2 username=student0042")
    assert "abc123" not in text
    assert "hunter2" not in text
    assert "student0042" not in text


def test_filter_redacts_formatted_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hopper.test.redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="hopper.test.redaction"):
        logger.info("Cannot reach %s.", "redis://default:topsecret@127.0.0.1:6379/0")
    assert "topsecret" not in caplog.text
    assert "redis://***:***@127.0.0.1:6379/0" in caplog.text
