"""Durable topics between topologies and processes, behind the TopicLog interface."""

from __future__ import annotations

import importlib

from hopper.config import TopicSettings
from hopper.pipeline.topics.base import (
    RecordTooLargeError,
    TopicConsumer,
    TopicError,
    TopicLog,
    TopicNotFoundError,
    TopicRecord,
    partition_for_key,
)

# Lazy import paths, so an engine's library loads only when it is chosen.
TOPIC_LOGS = {
    "sqlite": "hopper.pipeline.topics.sqlite:SqliteTopicLog",
    "kafka": "hopper.pipeline.topics.kafka:KafkaTopicLog",
    "nats": "hopper.pipeline.topics.nats:NatsTopicLog",
}


def open_topic_log(settings: TopicSettings) -> TopicLog:
    """Open the topic log the settings choose (no server is contacted yet)."""
    module_name, _, class_name = TOPIC_LOGS[settings.backend].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    log: TopicLog = cls.from_settings(settings)
    return log


__all__ = [
    "TOPIC_LOGS",
    "RecordTooLargeError",
    "TopicConsumer",
    "TopicError",
    "TopicLog",
    "TopicNotFoundError",
    "TopicRecord",
    "TopicSettings",
    "open_topic_log",
    "partition_for_key",
]
