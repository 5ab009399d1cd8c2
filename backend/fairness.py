"""Fair admission of the requests that queue runs, so one client's burst cannot make another client wait behind it.

A script that POSTs 500 runs at once used to put every one of them ahead of a person's click on "Submit": the app
parsed, validated and inserted them first come, first served, and its event loop and thread pool were busy with the
burst while the person's GET /api/runs waited too. `FairAdmission` lets at most `slots` of these requests into the
app at a time (their bodies are not even read before then); the others wait, cheaply, in one queue per client, and
a freed slot goes to the clients in turn (round robin). A second client's request is therefore next in line however
long the first client's queue is, and the burst never has more than `slots` requests competing with reads.

A client is its address and its User-Agent: on one machine a browser, `curl` and a Python script share 127.0.0.1 but
not their user agent. This is fairness between honest clients, not a defence: access control is the API token's job.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

# The routes that queue runs (POST /api/runs, its clone and retry, POST /api/sweeps): the expensive writes.
GATED_PREFIXES = ("/api/runs", "/api/sweeps")


def slots_for(db_url: str) -> int:
    """Requests in flight at once: two on SQLite (one validating while the other inserts: its writers take turns
    anyway), eight on PostgreSQL."""
    from db.session import is_sqlite

    return 2 if is_sqlite(db_url) else 8


class FairQueue:
    """At most `slots` holders at a time; waiters are admitted round robin across keys, first come first served
    within a key. Lives on one event loop."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self.waiting: collections.OrderedDict[Any, collections.deque[asyncio.Future]] = collections.OrderedDict()

    async def acquire(self, key: Any) -> None:
        if self.busy < self.slots and not self.waiting:
            self.busy += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, collections.deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:  # the client went away while waiting
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just before: pass it on
            else:
                self._forget(key, fut)
            raise

    def release(self) -> None:
        """Hand the slot to the next key in turn (it then goes to the back of the line), or free it."""
        while self.waiting:
            key, queue = next(iter(self.waiting.items()))
            fut = queue.popleft()
            if queue:
                self.waiting.move_to_end(key)
            else:
                del self.waiting[key]
            if not fut.done():
                fut.set_result(None)  # the slot passes over: busy is unchanged
                return
        self.busy -= 1

    def _forget(self, key: Any, fut: asyncio.Future) -> None:
        queue = self.waiting.get(key)
        if queue is not None and fut in queue:
            queue.remove(fut)
            if not queue:
                del self.waiting[key]


class FairAdmission:
    """Pure ASGI middleware: POST/PUT/PATCH/DELETE under GATED_PREFIXES pass through a FairQueue keyed by client."""

    def __init__(self, app, *, slots: int) -> None:
        self.app = app
        self.slots = slots
        self.queue: FairQueue | None = None  # made on the first request: bound to the server's event loop

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") \
                or not scope["path"].startswith(GATED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.queue is None:
            self.queue = FairQueue(self.slots)
        queue = self.queue
        await queue.acquire(client_key(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            queue.release()


def client_key(scope) -> tuple[str, str]:
    """(address, User-Agent) of the request's client."""
    host = (scope.get("client") or ("", 0))[0]
    agent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"user-agent"), "")
    return host, agent
