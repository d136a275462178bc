"""Hopper's settings: one typed object, one sub-model per part.

Values come from (highest first) keyword overrides, ``HOPPER_*`` environment variables
(nested with ``__``: ``HOPPER_STORE__BACKEND=postgres``) and an optional TOML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hopper.errors import ConfigError

DAY_SECS = 86_400
MIB = 1024 * 1024


class ServerSettings(BaseModel):
    """Where the HTTP/WebSocket server listens."""

    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)
    # Open connections, HTTP and WebSocket together; one more is answered 503 and closed.
    max_connections: int = Field(1000, gt=0)
    # A request's headers must arrive within this time (slow-header connections are closed).
    header_timeout_secs: float = Field(10.0, gt=0)
    # An HTTP request body must arrive within this time, else 408.
    body_timeout_secs: float = Field(30.0, gt=0)
    # A larger WebSocket frame closes its connection (1009) before Hopper reads it; frames
    # between ingest.max_body_bytes and this are read and recorded as too_large.
    max_websocket_frame_bytes: int = Field(8 * MIB, gt=0)
    # Live stream consumers at once (/v1/stream/*); one more is refused with 503.
    max_stream_subscribers: int = Field(64, gt=0)
    # Also serve the analytics API (/v1/students, /portal, /devops, /ec) from a process of
    # its own on this port (same host), so its requests do not wait behind ingest for the
    # node's one interpreter. Unset: only the main port serves it.
    api_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _api_port_is_its_own(self) -> ServerSettings:
        if self.api_port is not None and self.api_port == self.port:
            raise ValueError("server.api_port must differ from server.port")
        return self


class StoreSettings(BaseModel):
    """The durable event store."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: Path = Path("hopper-data/events.db")
    postgres_url: SecretStr = SecretStr("postgresql://127.0.0.1:5432/hopper")
    # synchronous=NORMAL in WAL mode survives process crashes (SIGKILL) without loss;
    # FULL also survives power loss at the price of an fsync per commit.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # /health warns when the SQLite store's volume has less free space than this.
    min_free_disk_bytes: int = Field(1024 * MIB, ge=0)


class IngestSettings(BaseModel):
    """Validation rules, limits and the group-commit writer."""

    max_event_age_secs: int = Field(30 * DAY_SECS, gt=0)
    max_clock_skew_secs: int = Field(300, ge=0)
    # A payload (HTTP body, WebSocket frame, MQTT message) longer than this is refused.
    max_body_bytes: int = Field(4 * MIB, gt=0)
    # More events than this in one batch: refused whole before any is parsed. A tablet
    # back online after days sends what it kept in batches of at most this many.
    max_batch_events: int = Field(5000, gt=0)
    # The intake queue's bounds: payloads admitted and not yet committed, and their bytes.
    queue_max_batches: int = Field(1024, gt=0)
    queue_max_bytes: int = Field(64 * MIB, gt=0)
    # While others wait, one client (address, token or MQTT topic) holds at most this
    # share of either bound.
    client_queue_share: float = Field(0.25, gt=0, le=1)
    commit_max_events: int = Field(5000, gt=0)
    retry_after_secs: int = Field(1, ge=1)
    # How long an HTTP request waits in line for the queue before it is answered 503.
    http_admission_wait_secs: float = Field(2.0, ge=0)
    # An HTTP request not acknowledged by then gets 503: its events may still be stored,
    # and the client's resend is then absorbed by dedup.
    http_ack_timeout_secs: float = Field(30.0, gt=0)
    # Frames one WebSocket connection may have read but not yet admitted; beyond this,
    # frames are answered at once with a retryable "busy" ack instead of being buffered.
    websocket_pending_max_bytes: int = Field(4 * MIB, gt=0)
    websocket_pending_max_frames: int = Field(256, gt=0)
    # Rejected bytes kept in reader_events_errors per rejection (with the full size and
    # hash): a recorded rejection can never be larger than this.
    error_raw_max_bytes: int = Field(4096, ge=0)
    # Per-event results in one answer; counts by reason are always complete.
    ack_max_results: int = Field(100, ge=0)


class MqttSettings(BaseModel):
    """The MQTT source (used when ``mqtt`` is among the edge topology's sources)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "hopper/+/events"
    client_id: str = "hopper-edge"
    username: str | None = None
    password: SecretStr | None = None
    # TLS to the broker: on when set; a CA file to trust a private CA (else the system's).
    tls: bool = False
    tls_ca_file: Path | None = None
    # Reject events whose school_id is not the topic level that matches the first "+" of
    # mqtt.topic (hopper/<school>/events), so one school's account cannot write for another.
    require_topic_school: bool = False
    keepalive_secs: int = 30
    reconnect_min_secs: int = 1
    reconnect_max_secs: int = 30


class PubsubSettings(BaseModel):
    """Live channels that receive accepted events after the commit."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    protos_channel: str = "protos"
    lp_events_channel: str = "lp-events"
    # None publishes every accepted event on lp-events; a list keeps only those types.
    lp_events_types: list[str] | None = None
    buffer_max_events: int = Field(100_000, gt=0)
    subscriber_max_messages: int = Field(10_000, gt=0)


class RetentionSettings(BaseModel):
    """How long rejected events are kept, and how often the purge runs in-process."""

    error_retention_days: int = Field(30, gt=0)
    purge_interval_secs: int = Field(3600, gt=0)


class TopologySettings(BaseModel):
    """One topology: its sources feed a chain of named stages that fans out to sinks.

    Sources: ``http``, ``websocket``, ``mqtt`` (served by ``hopper serve``) or
    ``topic:NAME`` (a consumer group, run by ``hopper worker``). Sinks: ``store``,
    ``topic:NAME`` (durable), ``protos``, ``lp-events``, ``monitor`` (live). Checked by
    ``hopper.pipeline.check_topologies`` (``hopper config check``).
    """

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1)
    stages: list[str] = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)
    # The consumer group of this topology's topic sources (default: the topology's name).
    group: str | None = None


class EdgeTopologySettings(TopologySettings):
    """The edge topology: the same fields, with the edge node's defaults."""

    sources: list[str] = Field(["http", "websocket"], min_length=1)
    stages: list[str] = Field(["decode", "authorize", "validate", "dedup"], min_length=1)
    sinks: list[str] = Field(["store", "protos", "lp-events", "monitor"], min_length=1)


class PipelineSettings(BaseModel):
    """Topologies declared in the config: ``[pipeline.NAME]``; ``edge`` is the default one."""

    model_config = ConfigDict(extra="allow")

    edge: EdgeTopologySettings = EdgeTopologySettings()

    @model_validator(mode="after")
    def _extra_topologies(self) -> PipelineSettings:
        extra = self.__pydantic_extra__ or {}
        for name, value in list(extra.items()):
            if not isinstance(value, TopologySettings):
                extra[name] = TopologySettings.model_validate(value)
        return self

    def topologies(self) -> dict[str, TopologySettings]:
        """Return every declared topology by name, ``edge`` first."""
        extra = {k: v for k, v in (self.__pydantic_extra__ or {}).items()}
        return {"edge": self.edge, **extra}


class TopicSettings(BaseModel):
    """Durable topics between topologies and processes."""

    backend: Literal["sqlite", "kafka", "nats"] = "sqlite"
    # The embedded log's file (backend "sqlite").
    sqlite_path: Path = Path("hopper-data/topics.db")
    # NORMAL (WAL) survives a process crash; FULL also a power loss, with an fsync a commit.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # Kafka brokers, host:port[,host:port] (backend "kafka").
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Replicas of each partition of a topic Hopper creates on Kafka (3 on a real cluster).
    kafka_replication_factor: int = Field(1, gt=0)
    # NATS server with JetStream (backend "nats"); credentials may be in the URL.
    nats_url: SecretStr = SecretStr("nats://127.0.0.1:4222")
    # First token of subjects, and prefix of stream and bucket names, on a shared NATS.
    nats_prefix: str = Field("hopper", pattern=r"^[A-Za-z0-9-]{1,32}$")
    # Replicas of each stream and bucket Hopper creates on NATS (3 on a cluster).
    nats_replicas: int = Field(1, gt=0)
    # Partitions of a topic Hopper creates; records with the same key share one.
    partitions: int = Field(4, gt=0)
    # Records older than this are removed.
    retention_secs: int = Field(7 * DAY_SECS, gt=0)
    # A group member that has not polled for this long loses its partitions to the others.
    session_timeout_secs: float = Field(10.0, gt=0)
    # A server call not answered within this raises BackendUnavailable.
    request_timeout_secs: float = Field(10.0, gt=0)
    # A record (key + value) larger than this is refused before anything is sent.
    max_record_bytes: int = Field(1_000_000, gt=0)
    # Topics read or written by another process (another node, a worker elsewhere).
    external: list[str] = []


class AuthSettings(BaseModel):
    """Who may send, stream and read metrics: bearer tokens (``hopper token create``)."""

    # "open" lets anyone do anything: for a closed lab network only (warned at start-up).
    mode: Literal["tokens", "open"] = "tokens"
    # Serve /metrics without a token (it holds counts, no personal data).
    metrics_open: bool = False
    # A token created or revoked in another process takes effect within this time.
    cache_secs: float = Field(5.0, gt=0)


# The reference tables a source can provide (hopper.store.reference defines them).
EcTableName = Literal[
    "ec_schools",
    "ec_students",
    "ec_classes",
    "ec_class_members",
    "ec_teachers",
    "ec_class_teachers",
    "ec_books",
    "ec_resources",
    "ec_learning_paths",
    "ec_lp_steps",
]


class EcSqlSourceSettings(BaseModel):
    """An SQL database (MariaDB/MySQL, PostgreSQL, SQLite) read with one query per table."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sql"]
    name: str = Field(min_length=1)  # how logs, errors and ec_table_state.source call it
    # SQLAlchemy URL: mysql://, mariadb:// (PyMySQL), postgresql:// (psycopg), sqlite:///.
    url: SecretStr
    # Table -> SELECT whose result columns are named as the table's columns.
    tables: dict[EcTableName, str] = Field(min_length=1)
    # Connecting, and each read from the server (a statement on PostgreSQL), at most this.
    timeout_secs: float = Field(60.0, gt=0)


class EcHttpSourceSettings(BaseModel):
    """HTTP endpoints answering JSON rows, one path per table, read page by page."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http"]
    name: str = Field(min_length=1)
    base_url: str = Field(pattern=r"^https?://")
    # Table -> path relative to base_url (or a full URL).
    tables: dict[EcTableName, str] = Field(min_length=1)
    # Sent with every request when auth_value is set (e.g. "Bearer ...").
    auth_header: str = "Authorization"
    auth_value: SecretStr | None = None
    timeout_secs: float = Field(30.0, gt=0)
    # Attempts after the first for a timeout, a connection error, 429 or 5xx.
    retries: int = Field(3, ge=0)
    backoff_secs: float = Field(1.0, ge=0)  # doubled at each retry ...
    backoff_max_secs: float = Field(30.0, ge=0)  # ... up to this (also caps Retry-After)
    # A page larger than this fails the table (the body is read at most this far).
    max_page_bytes: int = Field(8 * MIB, gt=0)
    # "next": follow the answer's next link (field next_field, or a Link rel="next"
    # header); "offset": offset_param/limit_param; "page": page_param (1, 2, ...) and
    # limit_param; "none": one request.
    paging: Literal["next", "offset", "page", "none"] = "next"
    page_size: int = Field(500, gt=0)  # limit_param's value ("offset" and "page")
    next_field: str = "next"  # dotted path in the answer object: "links.next"
    # Where the rows are in an answer object (dotted); unset: the answer itself when it is
    # a list, else the first list among "items", "data", "results", "rows".
    items_field: str | None = None
    page_param: str = "page"
    offset_param: str = "offset"
    limit_param: str = "limit"
    max_pages: int = Field(10_000, gt=0)  # per table, against a next link that never ends


EcSourceSettings = Annotated[
    EcSqlSourceSettings | EcHttpSourceSettings, Field(discriminator="kind")
]


class EcImportSettings(BaseModel):
    """The daily e-content import (``hopper job ec-import``): the analytics' reference data."""

    # How often ``hopper serve`` runs it (first run at start-up).
    interval_secs: int = Field(DAY_SECS, gt=0)
    # [[ecimport.sources]]: each provides some tables; none configured, the job does nothing.
    sources: list[EcSourceSettings] = []
    # A table whose source has more rows than this fails (its previous data is kept).
    max_rows: int = Field(1_000_000, gt=0)
    # A text value longer than this makes its row bad.
    max_value_chars: int = Field(10_000, gt=0)
    # Rows read, checked and staged at a time (bounds the memory a table takes).
    batch_rows: int = Field(1000, gt=0)
    # Bad rows described per table in the log and the summary (all are counted).
    max_reported_bad_rows: int = Field(20, ge=0)

    @model_validator(mode="after")
    def _one_source_per_table(self) -> EcImportSettings:
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"source names must be unique: {', '.join(repeated)}")
        provider: dict[str, str] = {}
        for source in self.sources:
            for table in source.tables:
                if table in provider:
                    raise ValueError(
                        f"table {table} is provided by both {provider[table]} and {source.name}"
                    )
                provider[table] = source.name
        return self


class ProcessingSettings(BaseModel):
    """The incremental analytics (``hopper job process``): derived tables from the events.

    Every field but ``interval_secs`` and ``writers_wait_secs`` shapes the results: each
    run stores them in ``an_runs.settings``, and a run whose settings differ from the last
    one's recomputes everything. Definitions: docs/analytics.md.
    """

    model_config = ConfigDict(extra="forbid")

    # How often ``hopper serve`` runs it (first run at start-up).
    interval_secs: int = Field(900, gt=0)
    # On PostgreSQL, a run waits at most this long for open writes into reader_events to
    # commit (so that none is skipped by the watermark); then it fails and the next retries.
    writers_wait_secs: float = Field(30, gt=0)
    # A gap between two events of a student longer than this starts a new session.
    session_gap_secs: int = Field(300, gt=0)
    # A page shown for less than this is not read (time 0); longer counts up to page_max_secs.
    page_min_secs: int = Field(5, ge=0)
    page_max_secs: int = Field(120, gt=0)
    # A book is completed when this share of its pages (ec_books.page_count) has been read.
    book_completed_share: float = Field(0.9, gt=0, le=1)
    # Flashcard grades (0-5) below this are failures (FSRS "Again"); this one is "Hard",
    # one more "Good", two or more "Easy".
    flashcard_pass_grade: int = Field(3, ge=1)
    # A card is mastered when its FSRS interval is at least this many days (Anki's "mature").
    flashcard_mastered_days: int = Field(21, gt=0)
    # The FSRS scheduler (PyPI fsrs, default parameters, no fuzzing).
    fsrs_desired_retention: float = Field(0.9, gt=0, lt=1)
    fsrs_learning_steps_mins: list[int] = Field([1, 10])
    fsrs_relearning_steps_mins: list[int] = Field([10])
    fsrs_maximum_interval_days: int = Field(36500, gt=0)
    # A learning-path step scored below this (0-1) is a failed attempt.
    lp_pass_score: float = Field(0.5, ge=0, le=1)
    # School days, ISO weekdays (1 = Monday): the "no reading" rule counts only these.
    school_weekdays: list[int] = Field([1, 2, 3, 4, 5], min_length=1)
    # Needs-help rules look only at students with an event in the last this many days.
    help_lookback_days: int = Field(30, gt=0)
    # Flag a step failed more than this many times and never passed.
    help_max_failed_attempts: int = Field(3, ge=0)
    # Flag a student who read nothing on the last this many school days before today.
    help_no_reading_school_days: int = Field(5, gt=0)
    # Flag a deck whose retention is below this, once it has help_min_retention_reviews.
    help_min_retention: float = Field(0.7, ge=0, le=1)
    help_min_retention_reviews: int = Field(20, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ProcessingSettings:
        if self.page_max_secs < self.page_min_secs:
            raise ValueError("page_max_secs must be at least page_min_secs")
        if any(not 1 <= day <= 7 for day in self.school_weekdays):
            raise ValueError("school_weekdays are ISO weekdays, 1 (Monday) to 7 (Sunday)")
        steps = (*self.fsrs_learning_steps_mins, *self.fsrs_relearning_steps_mins)
        if any(step <= 0 for step in steps):
            raise ValueError("FSRS steps are minutes > 0")
        return self


class UiSettings(BaseModel):
    """The school's analytics web pages (``/ui/``): sessions, login throttling, privacy."""

    # Serve the pages at /ui/ (with / redirecting there).
    enabled: bool = True
    # A session unused this long ends; every session ends this long after its login.
    session_idle_secs: int = Field(8 * 3600, gt=0)
    session_max_secs: int = Field(7 * DAY_SECS, gt=0)
    # Mark cookies Secure (sent over HTTPS only): on when the node is served over HTTPS.
    secure_cookies: bool = False
    # Failed logins within login_window_secs before more are refused (429), per username
    # and per client address; the counters keep at most login_throttle_max_entries keys.
    login_window_secs: int = Field(900, gt=0)
    login_max_failures_per_user: int = Field(5, gt=0)
    login_max_failures_per_address: int = Field(20, gt=0)
    login_throttle_max_entries: int = Field(10_000, gt=0)
    # Show pseudonyms instead of student names until an admin changes it on the settings page.
    hide_student_names: bool = False
    # The language of a user who chose none and whose browser asks for none we have.
    default_locale: Literal["en", "sl", "ar"] = "en"


class MonitorSettings(BaseModel):
    """The live classroom monitor (CAM): each tablet's presence, per class, live.

    Fed by the edge topology's ``monitor`` sink; read through ``/v1/monitor`` and the pages.
    """

    model_config = ConfigDict(extra="forbid")

    # "local": this node's own commits (the monitor sink); "redis": the lp-events channel on
    # pubsub.redis_url, for ingest that runs in other processes.
    source: Literal["local", "redis"] = "local"
    # How often the tablets send a CAM status (cam_status) event.
    heartbeat_interval_secs: float = Field(5.0, gt=0)
    # A device not heard from for this many intervals is stale, then offline.
    stale_after_missed: int = Field(2, gt=0)
    offline_after_missed: int = Field(3, gt=0)
    # A device heard from but with its screen off, or with nothing changing for this long.
    idle_after_secs: float = Field(120.0, gt=0)
    # A device not heard from for this long is forgotten (its tile goes).
    forget_after_secs: int = Field(DAY_SECS, gt=0)
    # At most one change per device per this many ms reaches the clients.
    device_update_interval_ms: int = Field(1000, ge=0)
    # SSE: a comment line this often on a quiet stream; the reconnect delay it suggests.
    sse_heartbeat_secs: float = Field(15.0, gt=0)
    sse_retry_ms: int = Field(3000, gt=0)
    # Polling clients are told to come back after this (more when many poll).
    poll_interval_ms: int = Field(2000, gt=0)
    # Bounds: devices tracked, subscriptions open, devices waiting in one client's queue,
    # changes kept for resuming, events offered and not yet applied.
    max_devices: int = Field(10_000, gt=0)
    max_subscribers: int = Field(200, gt=0)
    client_queue_max_devices: int = Field(1000, gt=0)
    change_log_max: int = Field(10_000, gt=0)
    buffer_max_events: int = Field(100_000, gt=0)
    # At start-up, presence is rebuilt from the events stored this recently (at most
    # warm_start_max_events of them); 0 starts blank.
    warm_start_secs: int = Field(900, ge=0)
    warm_start_max_events: int = Field(200_000, ge=0)
    # How often the names and classes (ec_students, ec_class_members, ec_classes, ec_books)
    # are checked for changes.
    roster_refresh_secs: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> MonitorSettings:
        if self.offline_after_missed <= self.stale_after_missed:
            raise ValueError("offline_after_missed must be more than stale_after_missed")
        return self


class LogSettings(BaseModel):
    """Logging output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"


class HopperSettings(BaseSettings):
    """Everything Hopper can be told, one sub-model per part."""

    model_config = SettingsConfigDict(
        env_prefix="HOPPER_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    ingest: IngestSettings = IngestSettings()
    mqtt: MqttSettings = MqttSettings()
    pubsub: PubsubSettings = PubsubSettings()
    retention: RetentionSettings = RetentionSettings()
    pipeline: PipelineSettings = PipelineSettings()
    topics: TopicSettings = TopicSettings()
    auth: AuthSettings = AuthSettings()
    ecimport: EcImportSettings = EcImportSettings()
    processing: ProcessingSettings = ProcessingSettings()
    monitor: MonitorSettings = MonitorSettings()
    ui: UiSettings = UiSettings()
    log: LogSettings = LogSettings()


def load_settings(config_file: Path | None = None, **overrides: object) -> HopperSettings:
    """Build settings from overrides, the environment and an optional TOML file."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"Config file {config_file} does not exist.")

    class _Sourced(HopperSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        return _Sourced(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"Invalid settings: {problems}.") from exc
