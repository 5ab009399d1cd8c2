"""backend/fairness.py: the admission queue takes waiting clients in turn, keeps each client's order, never holds
more than its slots, and passes on a slot whose waiter went away."""

from __future__ import annotations

import asyncio

from backend.fairness import FairQueue, client_key


async def _admissions(queue: FairQueue, arrivals: list[str]) -> list[str]:
    """The order in which requests from `arrivals` (client keys, in arrival order) get in, each holding its slot
    for a moment; checks the slot count on the way."""
    order: list[str] = []
    inside = 0

    async def request(i: int, key: str) -> None:
        nonlocal inside
        await queue.acquire(key)
        inside += 1
        assert inside <= queue.slots
        order.append(f"{key}{i}")
        await asyncio.sleep(0.001)
        inside -= 1
        queue.release()

    tasks = []
    for i, key in enumerate(arrivals):
        tasks.append(asyncio.create_task(request(i, key)))
        await asyncio.sleep(0)  # arrive one after another
    await asyncio.gather(*tasks)
    assert queue.busy == 0 and not queue.waiting
    return order


def test_a_second_client_is_next_in_line_behind_a_burst():
    arrivals = ["a"] * 20 + ["b"]  # a burst of 20 from one client, then one request from another
    order = asyncio.run(_admissions(FairQueue(2), arrivals))
    assert order.index("b20") <= 3, order  # the two in flight, at most one more of a's, then b
    assert [x for x in order if x.startswith("a")] == [f"a{i}" for i in range(20)]  # a's own order is kept


def test_clients_alternate_while_both_wait():
    order = asyncio.run(_admissions(FairQueue(1), ["a", "a", "a", "a", "b", "b", "b"]))
    assert order == ["a0", "a1", "b4", "a2", "b5", "a3", "b6"], order


def test_a_waiter_that_goes_away_passes_its_turn_on():
    async def scenario() -> list[str]:
        queue = FairQueue(1)
        await queue.acquire("a")  # holds the only slot
        gone = asyncio.create_task(queue.acquire("b"))
        stays = asyncio.create_task(queue.acquire("c"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        queue.release()
        await asyncio.wait_for(stays, 1)  # c gets the slot b would have had
        queue.release()
        return [queue.busy, len(queue.waiting)]

    assert asyncio.run(scenario()) == [0, 0]


def test_a_client_is_its_address_and_user_agent():
    scope = {"client": ("127.0.0.1", 5000), "headers": [(b"user-agent", b"Mozilla/5.0"), (b"accept", b"*/*")]}
    assert client_key(scope) == ("127.0.0.1", "Mozilla/5.0")
    assert client_key({"client": None, "headers": []}) == ("", "")
