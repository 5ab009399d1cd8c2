"""`reproduce --queue URL`: the reproduction's runs queued on a mefts server (POST /api/runs), waited for, and the
paper's table fetched from the server (GET /api/results/paper.{md,tex,csv,json}).

HTTP only: mefts_core never imports the service (backend, db), so this talks to any server, local or a cluster's.
The plan (tasks, methods, seeds, grid points, hyperparameters) is reproduce.py's, unchanged; every point is one
run named "reproduce <suite> <backbone> <task> <method> seed <seed> <i>/<n>" so that it can be found again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from mefts_core.cli.common import fail, write_json

log = logging.getLogger(__name__)
TOKEN_ENV = "MEFTS_API_TOKEN"
ACTIVE = ("queued", "running")  # every other status is terminal
POLL_SECONDS = 2.0
MAX_OUTAGE_SECONDS = 120.0  # how long polling rides out a server that does not answer (a restart)
FORMATS = ("md", "tex", "csv")


class ServerError(Exception):
    """A request the server refused or could not be reached; the message names the field when there is one."""


def run_name(suite: str, backbone: str, plan: Any, index: int) -> str:
    """The tag a reproduction's run carries (RunCreate's name: at most 200 characters)."""
    return f"reproduce {suite} {backbone} {plan.task} {plan.method} seed {plan.seed} {index}/{len(plan.points)}"[:200]


def run_requests(args: argparse.Namespace, plans: Sequence[Any]) -> list[dict[str, Any]]:
    """One POST /api/runs body per planned point, with the same hyperparameters the local mode trains with."""
    bodies = []
    for plan in plans:
        base = dict(plan.base_kwargs)
        device = base.pop("device", None)
        for i, point in enumerate(plan.points, 1):
            body: dict[str, Any] = {"backbone": args.backbone, "method": plan.method, "task": plan.task,
                                    "task_options": dict(plan.config.task_options), "seed": plan.seed,
                                    "hyperparameters": {**base, **point},
                                    "name": run_name(args.suite, args.backbone, plan, i)}
            if device is not None:
                body["device"] = device
            bodies.append(body)
    return bodies


def _refusal(res: httpx.Response) -> str:
    """The server's reason for an error answer: each 422 item as "field: message", else its detail or text."""
    try:
        detail = res.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        items = []
        for d in detail:
            loc = [str(x) for x in d.get("loc", []) if x not in ("body", "query")]
            items.append(f"{'.'.join(loc) or 'request'}: {d.get('msg', d)}")
        return "; ".join(items)
    return str(detail) if detail else (res.text.strip()[:500] or res.reason_phrase)


class Server:
    """A mefts server's API over httpx; every failure is a ServerError with a sentence for the user."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            res = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {self.url} ({type(e).__name__}: {e})") from e
        if res.status_code >= 400:
            hint = f" (set --api-token or {TOKEN_ENV})" if res.status_code == 401 else ""
            raise ServerError(f"{method} {path}: {res.status_code} {_refusal(res)}{hint}")
        return res

    def active_ids(self, backbone: str) -> set[int]:
        """Ids of the backbone's runs still queued or running (pages of 1000)."""
        ids: set[int] = set()
        offset = 0
        while True:
            page = self.request("GET", "/api/runs", params={"status": ",".join(ACTIVE), "backbone": backbone,
                                                            "sort": "id", "limit": 1000, "offset": offset}).json()
            ids.update(r["id"] for r in page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return ids

    def status(self, run_id: int) -> str:
        return self.request("GET", f"/api/runs/{run_id}").json()["status"]

    def close(self) -> None:
        self.http.close()


def submit(server: Server, bodies: Sequence[dict[str, Any]]) -> list[int]:
    """POST every body in order; at the first refusal, fail (exit 2) saying which field and which runs were queued."""
    ids: list[int] = []
    for body in bodies:
        try:
            ids.append(server.request("POST", "/api/runs", json=body).json()["id"])
        except ServerError as e:
            queued = f"; already queued: runs {', '.join(map(str, ids))}" if ids else "; nothing was queued"
            fail(f"the server refused run {body['name']!r}: {e}{queued}", 2)
        log.info("queued run %d: %s", ids[-1], body["name"])
    return ids


def wait(server: Server, ids: Sequence[int], backbone: str, progress: bool) -> dict[int, str]:
    """Poll until every run is terminal; their final statuses. One list request per poll finds the active ones;
    a run that leaves it is confirmed one by one (a list paged while runs finish could skip one)."""
    from tqdm import tqdm

    pending, statuses = set(ids), {}
    bar = tqdm(total=len(ids), desc="runs", unit="run", disable=not progress)
    outage_since: float | None = None
    last_logged = -1
    while pending:
        try:
            left = pending - server.active_ids(backbone)
            for run_id in sorted(left):
                status = server.status(run_id)
                if status not in ACTIVE:
                    statuses[run_id] = status
                    pending.discard(run_id)
                    bar.update(1)
            outage_since = None
        except ServerError as e:  # a restart or a network blip: keep polling for a while
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > MAX_OUTAGE_SECONDS:
                raise
            log.warning("%s; retrying", e)
        if not progress and len(statuses) != last_logged:
            last_logged = len(statuses)
            log.info("%d of %d runs finished (%s)", len(statuses), len(ids), _counts(statuses))
        if pending:
            time.sleep(POLL_SECONDS)
    bar.close()
    return statuses


def _counts(statuses: dict[int, str]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(Counter(statuses.values()).items())) or "none yet"


def _has_cell(table: dict[str, Any]) -> bool:
    """Whether the server's paper table (its JSON) has a number in a task column."""
    from mefts_core.tasks import TASKS

    return any(isinstance(row.get(c), int | float) for row in table["rows"] for c in table["columns"] if c in TASKS)


def _foreign_runs(server: Server, args: argparse.Namespace, tasks: Sequence[str], ours: int) -> int:
    """How many succeeded runs of the suite's `tasks` and this backbone on the server are not this reproduction's:
    the server's table selects from all of them."""
    page = server.request("GET", "/api/runs", params={"status": "succeeded", "backbone": args.backbone,
                                                      "task": ",".join(tasks), "limit": 1}).json()
    return max(0, page["total"] - ours)


def reproduce_on_server(args: argparse.Namespace, tasks: Sequence[str], no_data: dict[str, str],
                        plans: Sequence[Any]) -> int:
    """Queue the plan on the server; unless --no-wait, wait for it and write the server's paper table to --out."""
    if args.no_progress:
        log.setLevel(logging.INFO)  # progress lines instead of the bar, even without --verbose
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll request otherwise (`mefts` logs INFO)
    for task, why in no_data.items():
        log.warning("%s: not queued, no data here (%s)", task, why)
    bodies = run_requests(args, plans)
    if not bodies:
        fail("nothing to queue: no task of the suite has data", 1)
    server = Server(args.queue, args.api_token or os.environ.get(TOKEN_ENV))
    try:
        return _reproduce(server, args, tasks, bodies)
    except ServerError as e:
        fail(str(e), 2)
    finally:
        server.close()


def _reproduce(server: Server, args: argparse.Namespace, tasks: Sequence[str], bodies: list[dict[str, Any]]) -> int:
    server.request("GET", "/api/health")  # unreachable: one clear error before anything is sent
    ids = submit(server, bodies)
    table_url = f"{server.url}/#/paper?suite={args.suite}"
    print(f"queued {len(ids)} runs on {server.url}: {', '.join(map(str, ids))}")
    if args.no_wait:
        print(f"progress: {server.url}/#/runs; the paper table: {table_url} (dashboard), "
              f"{server.url}/api/results/paper.md?{httpx.QueryParams(suite=args.suite, backbone=args.backbone)}")
        return 0
    try:
        statuses = wait(server, ids, args.backbone, not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the runs go on on the server: {table_url}", file=sys.stderr)
        return 130
    log.info("all %d runs finished: %s", len(ids), _counts(statuses))
    ours = sum(s == "succeeded" for s in statuses.values())
    if foreign := _foreign_runs(server, args, tasks, ours):
        log.warning("the server's table also selects from %d succeeded %s runs on %s that this reproduction did not "
                    "queue", foreign, args.suite, args.backbone)
    params = {"suite": args.suite, "backbone": args.backbone}
    out = Path(args.out or f"reproduce-{args.suite}")
    out.mkdir(parents=True, exist_ok=True)
    for fmt in FORMATS:
        (out / f"paper-{args.suite}.{fmt}").write_text(server.request("GET", f"/api/results/paper.{fmt}",
                                                                      params=params).text)
    table = server.request("GET", "/api/results/paper.json", params=params).json()
    sys.stdout.write("\n" + (out / f"paper-{args.suite}.md").read_text())
    print(f"wrote {out}/paper-{args.suite}.md, .tex, .csv")
    write_json(str(out / f"reproduce-{args.suite}.json"), {
        "suite": args.suite, "backbone": args.backbone, "server": server.url,
        "runs": [{"id": i, "name": b["name"], "status": statuses[i]} for i, b in zip(ids, bodies)], "table": table})
    return 0 if _has_cell(table) else 1
