"""Admission to the intake: bounds by payloads and bytes, arrival order, fair shares."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hopper.ingest.admission import Admission, Ticket

pytestmark = pytest.mark.anyio


def test_payload_and_byte_bounds_hold() -> None:
    admission = Admission(max_payloads=3, max_bytes=100, client_share=1.0)
    first = admission.try_admit("a", 60)
    assert first is not None
    assert admission.try_admit("a", 50) is None  # 110 bytes would pass the bound
    second = admission.try_admit("a", 40)
    third = admission.try_admit("a", 0)
    assert second is not None and third is not None
    assert admission.try_admit("a", 0) is None  # three payloads held
    assert (admission.payloads, admission.bytes) == (3, 100)
    for ticket in (first, second, third):
        admission.release(ticket)
    assert (admission.payloads, admission.bytes) == (0, 0)


def test_an_empty_queue_admits_a_payload_larger_than_the_byte_bound() -> None:
    admission = Admission(max_payloads=3, max_bytes=100)
    assert admission.try_admit("a", 500) is not None


def test_release_is_idempotent() -> None:
    admission = Admission(max_payloads=2, max_bytes=100)
    ticket = admission.try_admit("a", 10)
    assert ticket is not None
    admission.release(ticket)
    admission.release(ticket)
    assert (admission.payloads, admission.bytes) == (0, 0)


async def test_waiters_are_served_in_arrival_order() -> None:
    admission = Admission(max_payloads=1, max_bytes=1000, client_share=1.0)
    held = admission.try_admit("x", 1)
    assert held is not None
    order: list[str] = []

    async def wait(name: str) -> None:
        ticket = await admission.admit(name, 1)
        assert ticket is not None
        order.append(name)
        admission.release(ticket)

    tasks = []
    for name in "abcde":
        tasks.append(asyncio.create_task(wait(name)))
        await asyncio.sleep(0.01)  # arrive one after the other
    assert admission.stats().waiting == 5
    admission.release(held)
    await asyncio.gather(*tasks)
    assert order == list("abcde")


async def test_a_try_admit_does_not_jump_the_line() -> None:
    admission = Admission(max_payloads=1, max_bytes=1000)
    held = admission.try_admit("x", 1)
    assert held is not None
    waiting = asyncio.create_task(admission.admit("a", 1))
    await asyncio.sleep(0.01)
    admission.release(held)
    # The slot is the waiter's now, even before its task runs.
    assert admission.try_admit("b", 1) is None
    ticket = await waiting
    assert ticket is not None and ticket.client == "a"


async def test_a_client_over_its_share_lets_others_go_first() -> None:
    admission = Admission(max_payloads=4, max_bytes=1000, client_share=0.5)
    hog = [admission.try_admit("hog", 1) for _ in range(4)]  # alone, it may take it all
    assert all(hog)
    hog_waits = asyncio.create_task(admission.admit("hog", 1))
    await asyncio.sleep(0.01)
    other_waits = asyncio.create_task(admission.admit("other", 1))
    await asyncio.sleep(0.01)
    admission.release(hog[0])  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    # The hog holds 3 of 4 (over its half): the newcomer gets the slot though it came later.
    assert other_waits.done() and not hog_waits.done()
    admission.release(hog[1])  # type: ignore[arg-type]
    ticket = await asyncio.wait_for(hog_waits, 1)  # nobody else waits: served anyway
    assert ticket is not None and ticket.client == "hog"


async def test_the_oldest_waiter_that_does_not_fit_is_not_overtaken() -> None:
    admission = Admission(max_payloads=10, max_bytes=100, client_share=1.0)
    held = admission.try_admit("x", 90)
    assert held is not None
    big = asyncio.create_task(admission.admit("big", 50))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(admission.admit("small", 5))
    await asyncio.sleep(0.01)
    assert not big.done() and not small.done()  # 5 bytes would fit, but big came first
    admission.release(held)
    assert await big is not None and await small is not None


async def test_a_waiter_that_times_out_leaves_the_line() -> None:
    admission = Admission(max_payloads=1, max_bytes=100)
    held = admission.try_admit("x", 1)
    assert held is not None
    assert await admission.admit("a", 1, timeout=0.05) is None
    assert admission.stats().waiting == 0
    admission.release(held)
    assert (admission.payloads, admission.stats().waiting) == (0, 0)


async def test_a_cancelled_waiter_gives_back_a_ticket_granted_meanwhile() -> None:
    admission = Admission(max_payloads=1, max_bytes=100)
    held = admission.try_admit("x", 1)
    assert held is not None
    waiting = asyncio.create_task(admission.admit("a", 1))
    await asyncio.sleep(0.01)
    admission.release(held)  # granted now, resolved on the loop's next turn...
    waiting.cancel()  # ...but the connection goes away first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (admission.payloads, admission.bytes) == (0, 0)


def test_threads_wait_in_the_same_line() -> None:
    admission = Admission(max_payloads=1, max_bytes=100)
    held = admission.try_admit("x", 1)
    assert held is not None
    got: list[Ticket | None] = []
    thread = threading.Thread(
        target=lambda: got.append(admission.admit_blocking("mqtt", 1, 0.01, is_abandoned=bool))
    )
    thread.start()
    threading.Event().wait(0.05)
    assert not got
    admission.release(held)
    thread.join(2)
    assert got and got[0] is not None and got[0].client == "mqtt"


def test_a_thread_that_gives_up_leaves_the_line() -> None:
    admission = Admission(max_payloads=1, max_bytes=100)
    assert admission.try_admit("x", 1) is not None
    stop = threading.Event()
    stop.set()
    assert admission.admit_blocking("mqtt", 1, 0.01, is_abandoned=stop.is_set) is None
    assert admission.stats().waiting == 0
