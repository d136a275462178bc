"""The web pages' time to first byte, per page and role, while ingest runs at 10,000 events/s.

The store is the analytics benchmark's (``bench_api``: the processing seed of N events with
16 classes of 25 students, processed by a full recompute); a teacher of ``class-00``, a
staff, an IT and an admin account are added with a session each (the login form itself is
covered by the browser tests). ``hopper serve`` runs on a copy with its default sinks (the
live monitor included), and every page of every role (``ROLE_PAGES``, the list the browser
tests and the screenshots visit) is requested open loop at ``--rate`` pages/s:

1. **idle**: no ingest (the baseline, measured in the same run on the same store);
2. **under ingest**: WebSocket clients send ``--ingest-rate`` events/s meanwhile.

Reported per page: p50 / p99 time to first byte (response headers received) and the
whole response's p99, idle beside under ingest; the goal is p99 TTFB under 200 ms.

    .venv/bin/python bench/bench_pages.py            # 10M stored, 20 pages/s, 10k events/s, 30 s
    .venv/bin/python bench/bench_pages.py --quick    # 200k stored, 5 s (figures mean little)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from typing import Any

import httpx
import seed
from bench_api import _stats, processed_store, start_server
from harness import BENCH_POOL_SEED, Stamper, log, now_ms
from phases import IngestProcess

from hopper.access import Scope, create_token
from hopper.access.users import Role, UserStore
from hopper.config import load_settings
from hopper.edge.pages.screenshots import ROLE_PAGES, STUDENT
from hopper.store.engine import engine_for

CLASS = "class-00"
TEACHER_ID = "t-bench"
ROLES = {"teacher": Role.TEACHER, "staff": Role.STAFF, "it": Role.IT, "admin": Role.ADMIN}
SESSION_COOKIE = "hopper_session"
GOAL_MS = 200.0


def add_accounts(settings: Any) -> dict[str, str]:
    """One account per role (the teacher teaches ``CLASS``) and a session each: role -> cookie."""
    engine = engine_for(settings.store)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM ec_class_teachers")
            conn.exec_driver_sql(
                "INSERT INTO ec_class_teachers (class_id, teacher_id, row_hash, changed_ms) "
                "VALUES (?, ?, x'00', 0)",
                (CLASS, TEACHER_ID),
            )
        users = UserStore(engine)
        cookies = {}
        for name, role in ROLES.items():
            username = f"bench-{name}"
            if users.get(username) is None:
                users.add(
                    username, role, "bench-password-1234", now_ms(),
                    teacher_id=TEACHER_ID if role is Role.TEACHER else None,
                )  # fmt: skip
            cookies[name] = users.start_session(username, now_ms())[0]
        return cookies
    finally:
        engine.dispose()


def page_list(base_url: str, cookies: dict[str, str]) -> list[tuple[str, str]]:
    """Every (role, path) of ``ROLE_PAGES``, with the class and a student filled in."""
    pages = []
    for role, paths in ROLE_PAGES.items():
        jar = {SESSION_COOKIE: cookies[role]}
        for path in paths:
            if path == STUDENT:
                listing = httpx.get(f"{base_url}/ui/classes/{CLASS}/students", cookies=jar)
                listing.raise_for_status()
                match = re.search(r'href="(/ui/students/[^"?]+)', listing.text)
                if match is None:
                    raise SystemExit("no student link on the students page")
                path = match.group(1)
            pages.append((role, path.replace("{class}", CLASS)))
    for role, path in pages:  # every page must answer 200 before anything is timed
        response = httpx.get(base_url + path, cookies={SESSION_COOKIE: cookies[role]})
        if response.status_code != 200:
            raise SystemExit(f"{role} {path}: {response.status_code}")
    return pages


def label(role: str, path: str) -> str:
    """A page's row name: the role and the path with its ids generalised."""
    path = path.replace(CLASS, "{class}")
    path = re.sub(r"^/ui/students/[^/?]+", "/ui/students/{student}", path)
    return f"{role} {path}"


async def page_load(
    base_url: str, cookies: dict[str, str], pages: list[tuple[str, str]], rate: float, secs: float
) -> dict[str, dict[str, list[float]]]:
    """Open-loop GETs at ``rate`` per second, pages in turn; TTFB and total ms per page."""
    rng = random.Random(9)
    results: dict[str, dict[str, list[float]]] = {
        label(r, p): {"ttfb": [], "total": []} for r, p in pages
    }
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    clients = {
        role: httpx.AsyncClient(
            base_url=base_url, cookies={SESSION_COOKIE: cookie}, limits=limits, timeout=30
        )
        for role, cookie in cookies.items()
    }

    async def one(role: str, path: str) -> None:
        started = time.perf_counter()
        try:
            async with clients[role].stream("GET", path) as response:
                ttfb = time.perf_counter() - started  # the status line and headers are in
                await response.aread()
        except httpx.HTTPError as exc:  # e.g. a keep-alive connection closed under us
            errors.append(f"{role} {path}: {type(exc).__name__}")
            return
        if response.status_code != 200:
            errors.append(f"{role} {path}: {response.status_code}")
            return
        row = results[label(role, path)]
        row["ttfb"].append(ttfb * 1000)
        row["total"].append((time.perf_counter() - started) * 1000)

    try:
        order = list(pages)
        next_at = time.perf_counter()
        stop = next_at + secs
        n = 0
        while next_at < stop:
            if n % len(order) == 0:
                rng.shuffle(order)
            role, path = order[n % len(order)]
            n += 1
            task = asyncio.create_task(one(role, path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    finally:
        for client in clients.values():
            await client.aclose()
    if errors:
        log(f"{len(errors)} page errors, e.g. {errors[:3]}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events stored")
    parser.add_argument("--rate", type=float, default=20.0, help="pages/s requested")
    parser.add_argument("--ingest-rate", type=float, default=10_000.0, help="events/s sent")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each phase")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if opts.quick:
        opts.events, opts.duration = 200_000, 5.0
    run_dir, db, _, _ = processed_store("pages", opts.events, quick=opts.quick)
    settings = load_settings(store={"sqlite_path": db})
    cookies = add_accounts(settings)
    token = create_token(settings.store, "bench", (Scope.INGEST,), None, now_ms()).token
    server = start_server(run_dir, db, token)
    stamper = Stamper(seed.EventPool(seed=BENCH_POOL_SEED), now_ms() - 5 * 3_600_000)
    batches = stamper.batches(int(opts.ingest_rate * (opts.duration + 3) / 100) + 2)
    try:
        server.wait_ready(mqtt=False)
        pages = page_list(server.base_url, cookies)
        log(f"{len(pages)} pages; idle phase, {opts.rate:g} pages/s for {opts.duration:g} s")
        idle = asyncio.run(page_load(server.base_url, cookies, pages, opts.rate, opts.duration))

        log(f"under ingest at {opts.ingest_rate:,.0f} events/s")
        ingest = IngestProcess(
            server.ws_url, batches, duration=opts.duration + 2, rate=opts.ingest_rate,
            token=token,
        )  # fmt: skip
        time.sleep(1.0)
        busy = asyncio.run(page_load(server.base_url, cookies, pages, opts.rate, opts.duration))
        ingest_summary = ingest.result(timeout=opts.duration + 60)
    finally:
        server.stop()
    ingest_rate = ingest_summary["events_per_s"]
    lines = [
        f"{opts.events:,} events stored; {opts.rate:g} pages/s for {opts.duration:g} s, idle and "
        f"while ingest ran at {ingest_rate:,} events/s (asked {opts.ingest_rate:,.0f})",
        f"{'page':<58} {'n':>4}  {'TTFB p50 / p99 ms':>19}  {'idle p50 / p99':>15}"
        f"  {'whole p99 ms':>12}",
    ]
    rows: list[dict[str, Any]] = []
    every: list[float] = []
    every_idle: list[float] = []
    for name in busy:
        b, i = busy[name], idle[name]
        every += b["ttfb"]
        every_idle += i["ttfb"]
        sb = _stats(b["ttfb"]) if b["ttfb"] else {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        si = _stats(i["ttfb"]) if i["ttfb"] else {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        whole = _stats(b["total"]) if b["total"] else {"p99": 0.0}
        rows.append({"page": name, "ttfb": sb, "idle_ttfb": si, "total_p99": whole["p99"]})
        lines.append(
            f"{name:<58} {sb['n']:>4}  {sb['p50']:>8} / {sb['p99']:<8}  "
            f"{si['p50']:>6} / {si['p99']:<6}  {whole['p99']:>12}"
        )
    overall, overall_idle = _stats(every), _stats(every_idle)
    lines.append(
        f"{'all pages':<58} {overall['n']:>4}  {overall['p50']:>8} / {overall['p99']:<8}  "
        f"{overall_idle['p50']:>6} / {overall_idle['p99']:<6}"
    )
    worst = max(rows, key=lambda r: r["ttfb"]["p99"])
    lines.append(
        f"goal p99 TTFB < {GOAL_MS:g} ms on every page: "
        f"{'met' if worst['ttfb']['p99'] < GOAL_MS else 'missed'} "
        f"(worst: {worst['page']}, {worst['ttfb']['p99']} ms)"
    )
    text = "\n".join(lines)
    print(text)
    (run_dir / "results.txt").write_text(text + "\n")
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "pages": rows,
                "all": overall,
                "all_idle": overall_idle,
                "ingest_events_per_s": ingest_rate,
                "options": vars(opts),
            },
            indent=2,
        )  # fmt: skip
    )
    (run_dir / "events.db").unlink(missing_ok=True)
    log(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
