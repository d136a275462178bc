"""The ``hopper`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
import uvicorn
from rich.console import Console
from rich.text import Text

from hopper.config import HopperSettings, load_settings
from hopper.edge.server import uvicorn_config
from hopper.errors import HopperError

if TYPE_CHECKING:
    from hopper.store.tokens import TokenStore

# No pretty tracebacks: they print local variables, settings and secrets among them;
# main() prints a redacted traceback instead.
app = typer.Typer(
    help="Hopper: telemetry and learning analytics for education apps.",
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and check the configuration.")
app.add_typer(config_app, name="config")
token_app = typer.Typer(help="Create, list and revoke access tokens (stored hashed).")
app.add_typer(token_app, name="token")
user_app = typer.Typer(help="Manage the web pages' accounts (passwords stored hashed).")
app.add_typer(user_app, name="user")
ui_app = typer.Typer(help="The web pages: screenshots for review.")
app.add_typer(ui_app, name="ui")
console = Console(stderr=True)
logger = logging.getLogger("hopper")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="HOPPER_CONFIG", help="TOML settings file."),
]


def _error(message: object) -> None:
    from hopper.observe.logs import redact

    # Errors quote what went wrong, URLs included: mask credentials as the logs do.
    console.print(Text("error: ", style="red") + Text(redact(str(message))), soft_wrap=True)


def _settings(config: Path | None, **overrides: Any) -> HopperSettings:
    try:
        return load_settings(config, **overrides)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
) -> None:
    """Run the edge node: ingest over HTTP, WebSocket (and MQTT), store, publish."""
    from hopper.edge import create_app
    from hopper.observe.logs import configure_logging

    settings = _settings(config)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    configure_logging(settings.log.level, settings.log.format)
    try:
        application = create_app(settings)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    logger.info(
        "Hopper edge listening on http://%s:%d.", settings.server.host, settings.server.port
    )
    uvicorn.Server(uvicorn_config(application, settings, application.state.guard)).run()


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    students: Annotated[int, typer.Option(help="Simulated students, one tablet each.")] = 120,
    rate: Annotated[float, typer.Option(help="Events per second the school sends.")] = 400.0,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8470,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the SQLite store goes (default: a temp dir).")
    ] = None,
    history_days: Annotated[
        int, typer.Option(min=0, max=28, help="Days of past school the pages show at start.")
    ] = 14,
) -> None:
    """Run Hopper on embedded defaults with a simulated school streaming over WebSocket."""
    from hopper.edge import create_app
    from hopper.observe.logs import configure_logging
    from hopper.simulate.school import SimulatedSchool, TrafficCounts, stream_school

    configure_logging("WARNING")
    directory = data_dir or Path(tempfile.mkdtemp(prefix="hopper-demo-"))
    school = SimulatedSchool(students)
    settings = _demo_settings(directory, port, school)
    application = create_app(settings)
    server = uvicorn.Server(uvicorn_config(application, settings, application.state.guard))
    # Auth stays on in the demo, as everywhere: the demo makes its own token.
    token = _demo_token(settings)
    examples = _write_demo_events(directory / "my-events.jsonl")
    base = f"http://127.0.0.1:{port}"
    ws_base = f"ws://127.0.0.1:{port}"
    counts = TrafficCounts()

    async def run() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
                return
            await asyncio.sleep(0.05)
        out = Console()
        out.print("[bold]Hopper demo[/bold]: edge node on embedded defaults + a simulated school")
        out.print(f"  store (SQLite)    {settings.store.sqlite_path}")
        out.print(f"  events HTTP       POST {base}/v1/events")
        out.print(f"  events WebSocket  {ws_base}/v1/events/ws")
        out.print(f"  live protobuf     {ws_base}/v1/stream/protos")
        out.print(f"  live JSON         {ws_base}/v1/stream/lp-events")
        out.print(f"  health            {base}/health")
        out.print(f"  metrics           {base}/metrics")
        out.print(f"  token             {token}  (ingest, stream, metrics; this demo's store only)")
        hopper = _hopper_command()
        out.print("  Try, in another terminal:", highlight=False)
        out.print(f"    export HOPPER_TOKEN={token}", highlight=False, soft_wrap=True)
        out.print(f"    {hopper} stream lp-events --url {base}", highlight=False, soft_wrap=True)
        out.print(f"    {hopper} send {examples} --url {base}", highlight=False, soft_wrap=True)
        out.print(
            f'    curl -H "Authorization: Bearer $HOPPER_TOKEN" {base}/metrics',
            highlight=False,
            soft_wrap=True,
        )
        loaded = await _fill_demo_school(settings, base, token, school, history_days)
        counts.accepted += loaded
        password = _demo_accounts(settings)
        out.print(f"  web pages         {base}/ui/  ({loaded} past events loaded and processed)")
        out.print(
            f"    log in as teacher1 (class 5a), staff, it or admin; password {password}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"  {students} students streaming ~{rate:.0f} events/s; Ctrl-C stops.")
        traffic = asyncio.create_task(
            stream_school(
                f"{ws_base}/v1/events/ws", school, counts, events_per_sec=rate, token=token
            )
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        live = out.is_terminal
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            elapsed = time.monotonic() - started
            if traffic.done() and traffic.exception() is not None:
                out.print(f"[red]simulator stopped:[/red] {traffic.exception()}")
                break
            line = (
                f"{elapsed:5.0f}s sent {counts.events} | accepted {counts.accepted} | "
                f"duplicates {counts.duplicates} | rejected {counts.rejected} | "
                f"queue {application.state.node.intake.depth}"
            )
            out.print(line, end="\r" if live else "\n", soft_wrap=True, highlight=False)
            if duration is not None and elapsed >= duration:
                break
        out.print()
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await traffic
        server.should_exit = True
        await serving
        out.print(
            f"Stopped. {counts.accepted} events stored, {counts.rejected} rejected "
            f"(see reader_events_errors in {settings.store.sqlite_path})."
        )

    asyncio.run(run())


def _demo_settings(directory: Path, port: int, school: Any) -> HopperSettings:
    """The demo's settings and reference data: the school imported, processing each minute.

    The import runs here, before the node starts, so that the live monitor starts with the
    school's classes and names.
    """
    from hopper.clock import SystemClock
    from hopper.edge.jobs import EDGE_JOBS
    from hopper.simulate.demo import reference_rows, reference_source, write_reference_db

    classes = max(1, min(8, len(school.students) // 30))
    db = write_reference_db(directory / "school.db", reference_rows(school, classes))
    settings = _settings(
        None,
        server={"host": "127.0.0.1", "port": port},
        store={"backend": "sqlite", "sqlite_path": directory / "events.db"},
        ecimport={"sources": [reference_source(db)]},
        processing={"interval_secs": 60},
    )
    EDGE_JOBS["ec-import"].run(settings, SystemClock())
    return settings


async def _fill_demo_school(
    settings: HopperSettings, base: str, token: str, school: Any, days: int
) -> int:
    """Send the school's past days, then process them; return the events accepted."""
    from hopper.client import HttpSender
    from hopper.clock import SystemClock
    from hopper.edge.jobs import EDGE_JOBS
    from hopper.simulate.demo import history_batches

    clock = SystemClock()
    accepted = 0

    def send_history() -> None:
        nonlocal accepted
        sender = HttpSender(base, token=token)
        try:
            for batch in history_batches(school, clock.now_ms(), days=days):
                accepted += int(sender.send(batch).get("accepted", 0))
        finally:
            sender.close()

    if days:
        await asyncio.to_thread(send_history)
    await asyncio.to_thread(EDGE_JOBS["process"].run, settings, clock)
    return accepted


def _demo_accounts(settings: HopperSettings) -> str:
    """Make the demo's accounts (a teacher, staff, IT, admin); return their one password."""
    import secrets

    from hopper.access import Role, UserError, UserStore
    from hopper.clock import SystemClock
    from hopper.store.engine import engine_for

    password = secrets.token_urlsafe(9)
    engine = engine_for(settings.store)
    users = UserStore(engine)
    now = SystemClock().now_ms()
    try:
        users.import_teachers(now)
        for name, role in (("staff", Role.STAFF), ("it", Role.IT), ("admin", Role.ADMIN)):
            with contextlib.suppress(UserError):
                users.add(name, role, password, now)
        for name in ("teacher1", "staff", "it", "admin"):
            users.set_password(name, password, now)
    finally:
        engine.dispose()
    return password


TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="HOPPER_TOKEN",
        help="Bearer token (env HOPPER_TOKEN; prefer the variable: options land in history).",
        show_default=False,
    ),
]


def _demo_token(settings: HopperSettings) -> str:
    from hopper.access import Scope, create_token
    from hopper.clock import SystemClock

    scopes = (Scope.INGEST, Scope.STREAM, Scope.METRICS)
    return create_token(settings.store, "demo", scopes, None, SystemClock().now_ms()).token


def _write_demo_events(path: Path) -> Path:
    """Write a few events, in the shape `hopper send` reads, for the demo's instructions."""
    now = time.time_ns() // 1_000_000
    lines = [
        {"type": "app_session_started", "username": "you", "device_id": "my-tablet"},
        {
            "type": "book_opened",
            "username": "you",
            "device_id": "my-tablet",
            "school_id": "school-001",
            "payload": {"book_id": "book-001"},
        },
        {
            "type": "page_viewed",
            "username": "you",
            "device_id": "my-tablet",
            "school_id": "school-001",
            "app_time_ms": now,
            "payload": {"book_id": "book-001", "page": 1, "duration_ms": 12000},
        },
    ]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def _hopper_command() -> str:
    """How the user can run this same `hopper` (the venv's script when not on PATH)."""
    import shutil

    script = Path(sys.argv[0])
    if script.name == "hopper":
        on_path = shutil.which("hopper")
        if on_path is not None and Path(on_path).resolve() == script.resolve():
            return "hopper"
        return str(script.resolve())
    return f"{sys.executable} -m hopper"


@app.command()
def send(
    file: Annotated[Path, typer.Argument(help="JSON-lines file of events ('-' reads stdin).")],
    url: Annotated[str, typer.Option(help="The edge node's base URL.")] = "http://127.0.0.1:8470",
    token: TokenOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per POST.")] = 100,
) -> None:
    """Send events from a JSON-lines file (the lp-events shape) over HTTP; print the answers."""
    from hopper.client import HopperBusy, HttpSender, event_from_json

    lines = sys.stdin if str(file) == "-" else file.open(encoding="utf-8")
    sender = HttpSender(url, token=token)
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    bad_lines = 0
    batch: list[Any] = []

    def flush() -> None:
        if not batch:
            return
        while True:
            try:
                answer = sender.send(batch)
                break
            except HopperBusy as busy:
                time.sleep(busy.retry_after)
        if answer["status_code"] in (401, 403):
            _error(f"the node refused the token: {answer.get('error')}")
            raise typer.Exit(2)
        for key in totals:
            totals[key] += int(answer.get(key, 0))
        for reason, count in answer.get("reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
        batch.clear()

    try:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                batch.append(event_from_json(orjson.loads(line)))
            except (orjson.JSONDecodeError, ValueError) as exc:
                bad_lines += 1
                _error(f"{file}:{number}: {exc}")
                continue
            if len(batch) >= batch_size:
                flush()
        flush()
    except httpx.HTTPError as exc:
        _error(f"cannot reach {url}: {exc}")
        raise typer.Exit(2) from exc
    finally:
        sender.close()
        if lines is not sys.stdin:
            lines.close()
    by_reason = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    typer.echo(
        f"accepted {totals['accepted']}, duplicates {totals['duplicates']}, "
        f"rejected {totals['rejected']}{f' ({by_reason})' if by_reason else ''}"
        f"{f'; {bad_lines} unreadable line(s) not sent' if bad_lines else ''}."
    )
    if bad_lines or totals["rejected"]:
        raise typer.Exit(1)


@app.command()
def stream(
    channel: Annotated[str, typer.Argument(help="Channel: lp-events (JSON) or protos.")],
    url: Annotated[str, typer.Option(help="The edge node's base URL.")] = "http://127.0.0.1:8470",
    token: TokenOption = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many messages.")] = None,
) -> None:
    """Print a live channel, one message a line (protos as base64); Ctrl-C stops."""
    import base64

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    from hopper.client import auth_headers

    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    ws_url = f"{ws_url.rstrip('/')}/v1/stream/{channel}"

    async def run() -> None:
        # A roomy receive queue: the client stops reading when it is full, and the server's
        # answer to our close frame would then wait behind unread messages.
        async with connect(
            ws_url,
            additional_headers=auth_headers(token),
            max_size=None,
            max_queue=1024,
            close_timeout=2,
        ) as ws:
            first = orjson.loads(await ws.recv())
            console.print(f"Subscribed to {first.get('subscribed')}; Ctrl-C stops.")
            seen = 0
            async for message in ws:
                if isinstance(message, bytes):
                    message = base64.b64encode(message).decode()
                typer.echo(message)
                seen += 1
                if count is not None and seen >= count:
                    return

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except InvalidStatus as exc:
        _error(
            f"the node refused the stream: HTTP {exc.response.status_code} "
            f"{exc.response.body.decode(errors='replace')[:200] if exc.response.body else ''}"
        )
        raise typer.Exit(2) from exc
    except (OSError, WebSocketException) as exc:
        _error(f"stream of {channel} ended: {exc}")
        raise typer.Exit(2) from exc


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the event store's schema up to date."""
    from hopper.store import open_event_store

    settings = _settings(config)
    store = open_event_store(settings.store)
    try:
        ran = store.migrate()
    finally:
        store.close()
    typer.echo(f"Applied {ran} migration(s) to the {settings.store.backend} store.")


@app.command()
def worker(
    name: Annotated[str, typer.Argument(help="The topology to run: pipeline.NAME.")],
    config: ConfigOption = None,
    status_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve /health and /metrics on this port."),
    ] = None,
    status_host: Annotated[
        str, typer.Option(help="Address the status port listens on.")
    ] = "127.0.0.1",
) -> None:
    """Run a topology fed by topics, as one member of their consumer groups, until stopped."""
    import threading

    from hopper.observe.logs import configure_logging
    from hopper.worker import StatusServer, Worker

    settings = _settings(config)
    configure_logging(settings.log.level, settings.log.format)
    status: StatusServer | None = None
    try:
        running = Worker(settings, name)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    if status_port is not None:
        status = StatusServer(running, status_host, status_port)
        try:
            status.start()
        except HopperError as exc:
            status.stop()
            running.resources.close()
            _error(exc)
            raise typer.Exit(2) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        running.run_until(stop)
    finally:
        if status is not None:
            status.stop()


@app.command()
def job(
    name: Annotated[str, typer.Argument(help="Job to run once, e.g. purge-errors.")],
    config: ConfigOption = None,
) -> None:
    """Run one scheduled job now (for cron or a Kubernetes CronJob)."""
    from hopper.clock import SystemClock
    from hopper.edge.jobs import EDGE_JOBS as JOBS

    if name not in JOBS:
        _error(f"unknown job {name!r}; known: {', '.join(JOBS)}")
        raise typer.Exit(2)
    settings = _settings(config)
    from hopper.jobs.history import engine_for
    from hopper.jobs.scheduler import run_and_record
    from hopper.store import open_event_store

    store = open_event_store(settings.store)  # the history table comes with the schema
    try:
        store.migrate()
    finally:
        store.close()
    engine = engine_for(settings.store)
    try:
        typer.echo(run_and_record(JOBS[name], settings, SystemClock(), engine))
    except HopperError as exc:  # a failed run: say why, exit non-zero (for cron and CronJobs)
        _error(exc)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the settings and the declared topologies; exit 2 when something is wrong."""
    from hopper.pipeline import check_topologies

    settings = _settings(config)
    problems = check_topologies(settings)
    missing = _missing_backends(settings)
    for problem in problems + missing:
        _error(problem)
    if problems or missing:
        raise typer.Exit(2)
    for name, topology in settings.pipeline.topologies().items():
        typer.echo(
            f"OK: {name} topology {' + '.join(topology.sources)} -> "
            f"{' -> '.join(topology.stages)} -> {', '.join(topology.sinks)}"
        )
    typer.echo(
        f"OK: store {settings.store.backend}, channels {settings.pubsub.backend}, topics "
        f"{settings.topics.backend}, auth {settings.auth.mode}."
    )


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = _settings(config)
    typer.echo(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2))


def _missing_backends(settings: HopperSettings) -> list[str]:
    import importlib.util

    needs = []
    if settings.store.backend == "postgres":
        needs.append(("psycopg", "postgres"))
    sources = {s for t in settings.pipeline.topologies().values() for s in t.sources}
    sinks = {s for t in settings.pipeline.topologies().values() for s in t.sinks}
    if settings.pubsub.backend == "redis" or (
        "monitor" in sinks and settings.monitor.source == "redis"
    ):
        needs.append(("redis", "redis"))
    if "mqtt" in sources:
        needs.append(("paho", "mqtt"))
    if any(c.startswith("topic:") for c in sources | sinks):
        if settings.topics.backend == "kafka":
            needs.append(("confluent_kafka", "kafka"))
        elif settings.topics.backend == "nats":
            needs.append(("nats", "nats"))
    return [
        f"{extra} backend needs {module}: pip install 'hopper[{extra}]'"
        for module, extra in needs
        if importlib.util.find_spec(module) is None
    ]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what the token is for, e.g. 'tablets'.")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="A scope to grant (repeat): ingest, stream, metrics, admin; for the "
            "analytics API apps, portal, devops, ec, teachers."
        ),
    ],
    school: Annotated[
        list[str] | None,
        typer.Option(help="Bind the token to this school_id (repeat); default: any school."),
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(help="Bind the token to one student (username): it reads only theirs."),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(help="Bind the token to one teacher (teacher_id): only their classes."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a token; its secret is printed once, on standard output, and never again."""
    from hopper.access import Scope, create_token
    from hopper.clock import SystemClock

    settings = _settings(config)
    known = {s.value for s in Scope}
    unknown = [s for s in scope if s not in known]
    if unknown or not scope:
        _error(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
        )
        raise typer.Exit(2)
    if student and teacher:
        _error("bind a token to one student or one teacher, not both")
        raise typer.Exit(2)
    subject = f"student:{student}" if student else f"teacher:{teacher}" if teacher else None
    try:
        issued = create_token(
            settings.store,
            name,
            [Scope(s) for s in scope],
            school or None,
            SystemClock().now_ms(),
            subject=subject,
        )
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    bound = ", ".join(school) if school else "any school"
    if subject:
        bound += f"; {subject} only"
    console.print(
        f"Created token {issued.stored.id} ({name}: {' '.join(issued.stored.scopes)}; {bound}). "
        "Its secret is shown once, below; store it now."
    )
    typer.echo(issued.token)


@token_app.command("list")
def token_list(config: ConfigOption = None) -> None:
    """List tokens (ids, names, scopes, schools; never secrets)."""
    from rich.table import Table

    settings = _settings(config)
    with _token_store(settings) as tokens:
        rows = tokens.all()
    table = Table("id", "name", "scopes", "schools", "for", "created", "revoked")
    for t in rows:
        table.add_row(
            t.id,
            t.name,
            " ".join(t.scopes),
            "any" if t.schools is None else " ".join(t.schools),
            t.subject or "",
            _iso(t.created_ms),
            "" if t.revoked_ms is None else _iso(t.revoked_ms),
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `hopper token list`).")],
    config: ConfigOption = None,
) -> None:
    """Revoke a token; running nodes refuse it within auth.cache_secs."""
    from hopper.clock import SystemClock

    settings = _settings(config)
    with _token_store(settings) as tokens:
        revoked = tokens.revoke(token_id, SystemClock().now_ms())
    if not revoked:
        _error(f"no active token with id {token_id!r}")
        raise typer.Exit(1)
    typer.echo(f"Revoked token {token_id}.")


@contextlib.contextmanager
def _token_store(settings: HopperSettings) -> Iterator[TokenStore]:
    from hopper.store import open_event_store
    from hopper.store.tokens import TokenStore

    try:
        store = open_event_store(settings.store)
        try:
            store.migrate()  # the token table comes with the store's schema
        finally:
            store.close()
        tokens = TokenStore.from_settings(settings.store)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    try:
        yield tokens
    finally:
        tokens.close()


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input (else: ask twice).",
    ),
]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@contextlib.contextmanager
def _user_store(settings: HopperSettings) -> Iterator[Any]:
    from hopper.access import UserStore
    from hopper.store import open_event_store
    from hopper.store.engine import engine_for

    try:
        store = open_event_store(settings.store)
        try:
            store.migrate()  # the users table comes with the store's schema
        finally:
            store.close()
        engine = engine_for(settings.store)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    try:
        yield UserStore(engine)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="The login name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="teacher, staff, it or admin.")],
    teacher_id: Annotated[
        str | None,
        typer.Option(help="Link a teacher to ec_teachers.teacher_id: they see its classes."),
    ] = None,
    display_name: Annotated[str | None, typer.Option(help="The name the pages show.")] = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Create an account for the web pages (/ui/)."""
    from hopper.access import Role
    from hopper.clock import SystemClock

    if role not in {r.value for r in Role}:
        _error(f"unknown role {role!r}; known: {', '.join(r.value for r in Role)}")
        raise typer.Exit(2)
    if teacher_id is not None and role != Role.TEACHER:
        _error("only a teacher account is linked to a teacher id")
        raise typer.Exit(2)
    settings = _settings(config)
    password = _read_password(password_stdin)
    with _user_store(settings) as users:
        users.add(
            username,
            Role(role),
            password,
            SystemClock().now_ms(),
            display_name=display_name,
            teacher_id=teacher_id,
        )
    typer.echo(f"Created {role} account {username}.")


@user_app.command("list")
def user_list(config: ConfigOption = None) -> None:
    """List the accounts (never their passwords)."""
    from rich.table import Table

    settings = _settings(config)
    with _user_store(settings) as users:
        rows = users.all()
    table = Table("username", "role", "name", "teacher id", "language", "created")
    for u in rows:
        table.add_row(
            u.username,
            u.role.value,
            u.display_name or "",
            u.teacher_id or "",
            u.locale or "",
            _iso(u.created_ms),
        )
    Console().print(table)


@user_app.command("remove")
def user_remove(
    username: Annotated[str, typer.Argument(help="The account to delete.")],
    config: ConfigOption = None,
) -> None:
    """Delete an account and end its sessions."""
    settings = _settings(config)
    with _user_store(settings) as users:
        removed = users.remove(username)
    if not removed:
        _error(f"no account {username!r}")
        raise typer.Exit(1)
    typer.echo(f"Removed account {username}.")


@user_app.command("passwd")
def user_passwd(
    username: Annotated[str, typer.Argument(help="The account whose password to change.")],
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Set a new password (ends the account's sessions)."""
    from hopper.clock import SystemClock

    settings = _settings(config)
    password = _read_password(password_stdin)
    with _user_store(settings) as users:
        changed = users.set_password(username, password, SystemClock().now_ms())
    if not changed:
        _error(f"no account {username!r}")
        raise typer.Exit(1)
    typer.echo(f"Changed the password of {username}; their sessions ended.")


@user_app.command("import-teachers")
def user_import_teachers(config: ConfigOption = None) -> None:
    """Make a teacher account for each imported teacher (ec_teachers) that has none.

    New accounts get a random password, printed once on standard output (one
    ``username<TAB>password`` line each); existing ones are linked to their teacher id.
    """
    from hopper.clock import SystemClock

    settings = _settings(config)
    with _user_store(settings) as users:
        done = users.import_teachers(SystemClock().now_ms())
    created = [(u, p) for u, p in done if p is not None]
    linked = [u for u, p in done if p is None]
    console.print(
        f"{len(created)} teacher account(s) created, {len(linked)} linked to their teacher id. "
        "New passwords are shown once, below; hand them out now."
    )
    for user, password in created:
        typer.echo(f"{user.username}\t{password}")


@ui_app.command("screenshots")
def ui_screenshots(
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and index.html.")] = Path(
        "screenshots"
    ),
    chromium: Annotated[
        str | None,
        typer.Option(envvar="HOPPER_CHROMIUM", help="Chromium executable (env HOPPER_CHROMIUM)."),
    ] = None,
    lang: Annotated[
        list[str] | None, typer.Option(help="Locales to shoot (repeat; default: en and ar).")
    ] = None,
) -> None:
    """Render every page for every role at 1366x768 and 1024x768 into PNGs + a contact sheet.

    Builds the demo school (60 students, 7 days) in a temporary store, serves it on a free
    loopback port and drives headless Chromium through each role's pages.
    """
    from hopper.edge import create_app
    from hopper.edge.pages.screenshots import take_screenshots
    from hopper.observe.logs import configure_logging
    from hopper.simulate.school import SimulatedSchool
    from hopper.testing import free_port

    configure_logging("WARNING")
    directory = Path(tempfile.mkdtemp(prefix="hopper-shots-"))
    port = free_port()
    school = SimulatedSchool(60)
    settings = _demo_settings(directory, port, school)
    application = create_app(settings, run_jobs=False)
    server = uvicorn.Server(uvicorn_config(application, settings, application.state.guard))
    token = _demo_token(settings)
    base = f"http://127.0.0.1:{port}"

    async def run() -> Path:
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.05)
            await _fill_demo_school(settings, base, token, school, 7)
            password = _demo_accounts(settings)
            accounts = {
                "teacher": ("teacher1", password),
                "staff": ("staff", password),
                "it": ("it", password),
                "admin": ("admin", password),
            }
            return await asyncio.to_thread(
                take_screenshots,
                base,
                accounts,
                out,
                class_id="5a",
                chromium=chromium,
                locales=lang or ["en", "ar"],
            )
        finally:
            server.should_exit = True
            await serving

    try:
        sheet = asyncio.run(run())
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc
    typer.echo(f"Wrote {sheet}")


def main() -> None:
    """Entry point of the ``hopper`` script."""
    try:
        app()
    except Exception:  # noqa: BLE001 - a bug: show it, but never a secret it may quote
        import traceback

        from hopper.observe.logs import redact

        console.print(Text(redact(traceback.format_exc())), soft_wrap=True)
        sys.exit(1)
