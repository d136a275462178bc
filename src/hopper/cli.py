"""The ``hopper`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import uvicorn
from rich.console import Console
from rich.text import Text

from hopper.config import HopperSettings, load_settings
from hopper.errors import HopperError

app = typer.Typer(help="Hopper: telemetry and learning analytics for education apps.")
config_app = typer.Typer(help="Inspect and check the configuration.")
app.add_typer(config_app, name="config")
console = Console(stderr=True)
logger = logging.getLogger("hopper")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="HOPPER_CONFIG", help="TOML settings file."),
]


def _error(message: object) -> None:
    console.print(Text("error: ", style="red") + Text(str(message)), soft_wrap=True)


def _settings(config: Path | None, **overrides: Any) -> HopperSettings:
    try:
        return load_settings(config, **overrides)
    except HopperError as exc:
        _error(exc)
        raise typer.Exit(2) from exc


def _uvicorn_config(app_: Any, settings: HopperSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app_,
        host=settings.server.host,
        port=settings.server.port,
        ws="websockets-sansio",
        # Frames up to twice the limit reach Hopper, which records them as too_large;
        # larger ones are cut off by the server (close code 1009) before they are read.
        ws_max_size=2 * settings.ingest.max_body_bytes,
        http="httptools",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=None,
    )


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
    uvicorn.Server(_uvicorn_config(application, settings)).run()


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
) -> None:
    """Run Hopper on embedded defaults with a simulated school streaming over WebSocket."""
    from hopper.edge import create_app
    from hopper.observe.logs import configure_logging
    from hopper.simulate.school import SimulatedSchool, TrafficCounts, stream_school

    configure_logging("WARNING")
    directory = data_dir or Path(tempfile.mkdtemp(prefix="hopper-demo-"))
    settings = _settings(
        None,
        server={"host": "127.0.0.1", "port": port},
        store={"backend": "sqlite", "sqlite_path": directory / "events.db"},
    )
    application = create_app(settings)
    server = uvicorn.Server(_uvicorn_config(application, settings))
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
        out.print(f"  {students} students streaming ~{rate:.0f} events/s; Ctrl-C stops.")
        school = SimulatedSchool(students)
        traffic = asyncio.create_task(
            stream_school(f"{ws_base}/v1/events/ws", school, counts, events_per_sec=rate)
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
def job(
    name: Annotated[str, typer.Argument(help="Job to run once, e.g. purge-errors.")],
    config: ConfigOption = None,
) -> None:
    """Run one scheduled job now (for cron or a Kubernetes CronJob)."""
    from hopper.clock import SystemClock
    from hopper.jobs import JOBS

    if name not in JOBS:
        _error(f"unknown job {name!r}; known: {', '.join(JOBS)}")
        raise typer.Exit(2)
    settings = _settings(config)
    typer.echo(JOBS[name].run(settings, SystemClock()))


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the settings and the declared topology; exit 2 when something is wrong."""
    from hopper.pipeline import check_edge_topology

    settings = _settings(config)
    problems = check_edge_topology(settings)
    missing = _missing_backends(settings)
    for problem in problems + missing:
        _error(problem)
    if problems or missing:
        raise typer.Exit(2)
    edge = settings.pipeline.edge
    typer.echo(
        f"OK: edge topology {' + '.join(edge.sources)} -> {' -> '.join(edge.stages)} -> "
        f"{', '.join(edge.sinks)}; store {settings.store.backend}, channels "
        f"{settings.pubsub.backend}."
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
    if settings.pubsub.backend == "redis":
        needs.append(("redis", "redis"))
    if "mqtt" in settings.pipeline.edge.sources:
        needs.append(("paho", "mqtt"))
    return [
        f"{extra} backend needs {module}: pip install 'hopper[{extra}]'"
        for module, extra in needs
        if importlib.util.find_spec(module) is None
    ]


def main() -> None:
    """Entry point of the ``hopper`` script."""
    app()
