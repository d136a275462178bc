"""The live classroom monitor (CAM): every tablet's presence, per class, as it happens.

Each device's tile (``DeviceTile``) shows the student whose username its events carry
(named from ``ec_students``), the foreground app, book and page *n of N*, screen on,
battery, app version, when it was last heard from, and a state (``DeviceState``):
*online*, *idle* (screen off, or nothing changing for ``monitor.idle_after_secs``),
*stale* and *offline* (``monitor.stale_after_missed`` / ``offline_after_missed`` missed
heartbeats of ``monitor.heartbeat_interval_secs``). CAM status events (``cam_status``) set
app, book, page, screen and battery; every other accepted event proves presence and sets
what it carries (book, page).

Parts:

    presence.py  a device's presence, the state rules, hostile-input checks
    roster.py    students, classes and books from the reference tables
    board.py     MonitorBoard: presence per class, changes (1 per device per interval,
                 cursors, a bounded log), subscriptions (bounded, coalescing queues)
    feed.py      MonitorSink: the live sink ``monitor`` (after each commit), or Redis
                 ``lp-events``; warm start from the store; roster reloads
    sse.py       server-sent events: ``sse_response``

Fed after the commit: ``monitor`` is a live sink of the edge topology
(``pipeline.edge.sinks``), registered like the channels in ``hopper.pipeline.LIVE_SINKS``.
With ``monitor.source = "redis"`` it follows the ``lp-events`` channel instead.

The interface for pages and API handlers (the board is ``app.state.monitor``, or
``EdgeNode.monitor``; None when the edge topology has no ``monitor`` sink). Check that the
caller may read a class first: the board does not know who asks.

- ``board.snapshot(class_id) -> ClassSnapshot | None``: ``.tiles`` (``list[DeviceTile]``,
  by student name), ``.not_seen`` (students of the class on no tracked device), ``.counts``
  by state, ``.cursor``; ``.as_dict()`` is the JSON of ``GET /v1/monitor/classes/{id}``.
  None: no such class.
- ``board.changes_after(class_id, cursor) -> ClassChanges | None``: each device changed
  after ``cursor`` (its whole tile, or ``{"removed": true}``), coalesced; when the cursor is
  unknown or has left the log, ``.snapshot`` is set instead (start again from it).
  ``board.poll_retry_after_ms(caller_key)`` suggests when that caller should poll again.
- ``board.subscribe(class_ids, after=cursor) -> Subscription`` (in the event loop; raises
  ``MonitorBusyError`` past ``monitor.max_subscribers``): ``await sub.next(timeout)`` returns
  a list of ``ClassSnapshot`` / ``DeviceChange`` (first the snapshots, or the changes since
  ``after``), ``[]`` on timeout, None once closed; ``async for messages in sub`` does the
  same without a timeout; ``sub.close()``.
- ``sse_response(board, class_id, last_event_id) -> Response``: the whole SSE stream for a
  page (``event: snapshot``, ``event: device`` with the changed fields, ``: heartbeat``,
  ``id:`` cursors, ``Last-Event-ID`` resume), or 503 when the monitor is full.
- ``board.device_tiles()``: every tracked device, for the devices page.
"""

from hopper.edge.monitor.board import (
    ClassChanges,
    ClassSnapshot,
    DeviceChange,
    MonitorBoard,
    MonitorBusyError,
    Subscription,
)
from hopper.edge.monitor.feed import MonitorSink, build_monitor_sink
from hopper.edge.monitor.presence import DeviceState, DeviceTile, Sighting
from hopper.edge.monitor.roster import Roster, StudentRef
from hopper.edge.monitor.sse import parse_cursor, sse_response

__all__ = [
    "ClassChanges",
    "ClassSnapshot",
    "DeviceChange",
    "DeviceState",
    "DeviceTile",
    "MonitorBoard",
    "MonitorBusyError",
    "MonitorSink",
    "Roster",
    "Sighting",
    "StudentRef",
    "Subscription",
    "build_monitor_sink",
    "parse_cursor",
    "sse_response",
]
