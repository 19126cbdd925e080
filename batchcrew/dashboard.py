"""The live dashboard: one HTML page that fetches the controller's state as JSON every second.

`snapshot` builds that state from what the controller, its scheduler and its tracker already
keep; it is read only when a page asks, so dispatch never waits on it. The page is served by
`Controller.serve_dashboard` (aiohttp, in the controller's process) or by `asgi_app`, which a
FastAPI or any ASGI app mounts. The page builds its DOM with `textContent` only: task names and
errors are user data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from batchcrew.controller import Controller, _check_count, _is_loopback
from batchcrew.tracking import WorkerRecord

if TYPE_CHECKING:
    from batchcrew.group import ControllerGroup

__all__ = ["asgi_app", "snapshot"]

logger = logging.getLogger("batchcrew")

_LIVE_SHOWN = 200  # live workers listed on the page (all are counted)
_GONE_SHOWN = 20  # the most recently gone workers listed after them
_TEXT_MAX = 1000  # characters of an error shown; the whole one is in the Result
_SECONDS_SHUTDOWN = 1.0  # at close, how long a request under way may take to finish

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the state ------------------------------------------------------------------------------


def snapshot(view: Controller | ControllerGroup | Sequence[Controller]) -> dict[str, Any]:
    """The dashboard's state of a controller, or of each controller of a group (or of a list),
    as a dict ready for `json.dumps`: `time` (seconds since the epoch) and `controllers`, one
    dict each with `name`, `state` ("new", "running", "closed"), `launcher`, `max_workers`,
    `counts` (as `Controller.counts()`), `queued`, `launching`, `launches`,
    `launch_failures`, `workers_by_state`, `workers` (rows of `Controller.workers()`, times in
    seconds since the epoch: the live ones, then the last gone, a few hundred at most),
    `workers_total`, `failures` (recent failed results, the newest first) and
    `launcher_errors` (the newest first). Long errors are cut to 1,000 characters.

    Reads running state only (counters, the workers' records, two short queues): a pass over
    the live workers at most, never over the tasks.
    """
    return {"time": time.time(), "controllers": [_state(crew) for crew in _controllers(view)]}


def _controllers(view: Controller | ControllerGroup | Sequence[Controller]) -> list[Controller]:
    if isinstance(view, Controller):
        return [view]
    if isinstance(view, Sequence):
        return list(view)
    return list(view.controllers.values())


def _state(controller: Controller) -> dict[str, Any]:
    dispatcher = controller._dispatcher
    state = "new" if dispatcher is None else "running" if controller.running else "closed"
    by_state = dict.fromkeys(("launching", "idle", "busy", "leaving", "gone"), 0)
    live: list[tuple[str, WorkerRecord]] = []
    gone: list[WorkerRecord] = []
    queued = launching = launches = launch_failures = 0
    errors: list[dict[str, Any]] = []
    if dispatcher is not None:
        scheduler, tracker = dispatcher.scheduler, dispatcher.tracker
        queued, launching = scheduler.queued, scheduler.launching
        launches, launch_failures = tracker.launches, tracker.launch_failures
        for record in tracker.records():  # the gone ones (oldest first), then the live ones
            if record.ended is None:
                worker_state = scheduler.state_of(record.worker.encode())
            else:
                worker_state = "gone"
            by_state[worker_state] = by_state.get(worker_state, 0) + 1
            if worker_state == "gone":
                gone.append(record)
            elif len(live) < _LIVE_SHOWN:
                live.append((worker_state, record))
        errors = [
            {"time": _number(moment), "what": _text(what), "why": _text(why)}
            for moment, what, why in reversed(tracker.errors)
        ]
    shown = live + [("gone", record) for record in gone[: -_GONE_SHOWN - 1 : -1]]
    return {
        "name": controller.name,
        "state": state,
        "launcher": controller.launcher.describe(),
        "max_workers": controller.max_workers,
        "counts": controller.counts(),
        "queued": queued,
        "launching": launching,
        "launches": launches,
        "launch_failures": launch_failures,
        "workers_by_state": by_state,
        "workers": [_worker_row(worker_state, record) for worker_state, record in shown],
        "workers_total": sum(by_state.values()),
        "failures": [
            {
                "name": _text(result.name),
                "status": result.status,
                "error": _text(result.error),
                "worker": result.worker,
                "seconds": _number(result.seconds),
            }
            for result in reversed(controller._failures)
        ],
        "launcher_errors": errors,
    }


def _worker_row(state: str, record: WorkerRecord) -> dict[str, Any]:
    row = record.row(state)
    for number in ("launched", "connected", "ended", "seconds", "cpu"):
        row[number] = _number(row[number])
    row["reason"] = _text(row["reason"])
    row["output_tail"] = _text(row["output_tail"])
    return row


def _number(value: float | None) -> float | None:
    """JSON has no infinity or NaN: those become null."""
    return value if value is None or math.isfinite(value) else None


def _text(value: str | None) -> str | None:
    if value is None or len(value) <= _TEXT_MAX:
        return value
    return value[:_TEXT_MAX] + "…"


def _state_json(view: Controller | ControllerGroup | Sequence[Controller]) -> bytes:
    return json.dumps(snapshot(view), separators=(",", ":")).encode()


# -- serving from the controller's process ---------------------------------------------------


async def _serve(
    controllers: Sequence[Controller],
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[str],
) -> None:
    """Serve the dashboard of `controllers` on `host`:`port` until cancelled; report its URL
    once it listens. Run it in the task group of a controller, which cancels it when it
    closes."""
    # Imported here: aiohttp's server is only loaded by those who serve a dashboard.
    from aiohttp import web

    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be an address to listen on, such as '127.0.0.1', not {host!r}")
    _check_count("port", port, minimum=0)
    if port > 65535:
        raise ValueError(f"port must be between 0 and 65535, not {port}")
    loopback = _is_loopback(host)

    async def page(request: web.Request) -> web.Response:
        if loopback and not _is_loopback(_host_name(request.host)):
            # Bound to loopback, yet asked for another name: a web page that pointed its own
            # name at 127.0.0.1 (DNS rebinding) must not read the dashboard.
            raise web.HTTPMisdirectedRequest(text="this dashboard answers on loopback only\n")
        if request.path == "/state.json":
            return web.Response(body=_state_json(controllers), headers=_JSON_HEADERS)
        return web.Response(body=_PAGE, headers=_PAGE_HEADERS)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/state.json", page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SECONDS_SHUTDOWN)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        name = f"[{host}]" if ":" in host else host
        url = f"http://{name}:{bound}/"
        if not loopback:
            logger.warning(
                "the dashboard listens on %s, beyond loopback: anyone who can reach this port "
                "can read task names, errors and workers (it has no authentication)",
                url,
            )
        logger.info("dashboard at %s", url)
        task_status.started(url)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SECONDS_SHUTDOWN + 5):
            await runner.cleanup()


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: 127.0.0.1:8080, [::1]:8080, localhost."""
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


# -- serving from an ASGI app ----------------------------------------------------------------


def asgi_app(view: Controller | ControllerGroup) -> ASGIApp:
    """The dashboard of a controller or a group as an ASGI app, to mount in a web app:
    `app.mount("/dashboard", batchcrew.dashboard.asgi_app(controller))` in FastAPI or
    Starlette. It answers GET and HEAD at its root (the page) and at `state.json`, under
    any mount path. The controller may start later (the page says "new" until it does).

    It is read-only but has no authentication of its own: protect it as the rest of the app
    (a dependency on the route that mounts it, a proxy), and limit the Host names the app
    answers to (Starlette's TrustedHostMiddleware) if it listens on loopback.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})  # no websockets here
            return
        method = scope["method"]
        path = _local_path(scope)
        if method not in ("GET", "HEAD"):
            status, headers, body = 405, [(b"allow", b"GET, HEAD")], b"read-only\n"
        elif path == "":
            # Mounted at /dashboard and asked for /dashboard: the page's relative URLs need
            # the trailing slash.
            location = (scope.get("root_path", "") + "/").encode()
            status, headers, body = 307, [(b"location", location)], b""
        elif path == "/":
            status, headers, body = 200, _encoded(_PAGE_HEADERS), _PAGE
        elif path == "/state.json":
            status, headers, body = 200, _encoded(_JSON_HEADERS), _state_json(view)
        else:
            status, headers, body = 404, [(b"content-type", b"text/plain")], b"not found\n"
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


def _local_path(scope: Scope) -> str:
    """The path below the mount point. Starlette keeps the whole path and puts the mount in
    `root_path`; other servers strip it. Either way, this is what follows the mount."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served on its own (not mounted), the app has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(key.lower().encode(), value.encode()) for key, value in headers.items()]


# -- the page -------------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light dark; --fg: #1c2330; --muted: #667085; --line: #d9dee7;
  --card: #f6f8fb; --success: #2e9d5b; --error: #d1453b; --crash: #8e44ad;
  --cancel: #9aa3b2; --unresolved: #3b7dd8; --launching: #e0a030; --idle: #7fa7d9;
  --busy: #2e9d5b; --leaving: #e07b30; --gone: #d5d9e0; }
@media (prefers-color-scheme: dark) { :root { --fg: #e4e8ef; --muted: #98a2b3;
  --line: #344054; --card: #1d2433; } body { background: #121826; } }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); margin: 0 auto;
  max-width: 1200px; padding: 12px 20px 40px; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 20px; margin: 8px 0; }
h2 { font-size: 15px; margin: 22px 0 8px; }
.muted { color: var(--muted); }
.bad { color: var(--error); font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
  gap: 10px; margin-top: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 12px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 12px; }
.card svg { width: 100%; height: 28px; display: block; }
.card polyline { fill: none; stroke: var(--unresolved); stroke-width: 1.5; }
.bar { display: flex; height: 14px; border-radius: 7px; overflow: hidden;
  background: var(--line); margin: 6px 0; }
.bar span { display: block; height: 100%; }
.legend { display: flex; gap: 18px; flex-wrap: wrap; }
.legend b { font-variant-numeric: tabular-nums; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 5px; }
.success { background: var(--success); } .error { background: var(--error); }
.crash { background: var(--crash); } .cancel { background: var(--cancel); }
.unresolved { background: var(--unresolved); } .launching { background: var(--launching); }
.idle { background: var(--idle); } .busy { background: var(--busy); }
.leaving { background: var(--leaving); } .gone { background: var(--gone); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 500; white-space: nowrap; }
td { white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; word-break: break-word; max-width: 560px; }
.scroll { max-height: 420px; overflow: auto; }
"""

_BODY = """
<header>
  <h1>batchcrew <span id="title"></span></h1>
  <label id="choice" hidden>controller <select id="controller"></select></label>
  <span id="status" class="muted">connecting…</span>
</header>
<section class="cards">
  <div class="card"><div class="label">tasks per second</div>
    <div class="value" id="rate">&ndash;</div>
    <svg viewBox="0 0 100 28" preserveAspectRatio="none"><polyline id="spark"/></svg></div>
  <div class="card"><div class="label">pushed</div><div class="value" id="count-tasks"></div></div>
  <div class="card"><div class="label">unresolved</div>
    <div class="value" id="count-unresolved"></div></div>
  <div class="card"><div class="label">queued</div><div class="value" id="queued"></div></div>
  <div class="card"><div class="label">running</div><div class="value" id="running"></div></div>
  <div class="card"><div class="label">workers connected</div>
    <div class="value" id="count-workers"></div></div>
  <div class="card"><div class="label">launches (failed)</div>
    <div class="value"><span id="launches"></span>
      <small>(<span id="launch-failures"></span>)</small></div></div>
</section>
<h2>Tasks by status</h2>
<div class="bar" id="status-bar"></div>
<div class="legend" id="status-legend"></div>
<h2>Workers by state</h2>
<div class="bar" id="state-bar"></div>
<div class="legend" id="state-legend"></div>
<h2>Workers <small class="muted" id="workers-note"></small></h2>
<div class="scroll"><table id="workers"><thead><tr></tr></thead><tbody></tbody></table></div>
<h2>Recent failures</h2>
<div class="scroll"><table id="failures"><thead><tr></tr></thead><tbody></tbody></table></div>
<h2>Launcher errors</h2>
<div class="scroll"><table id="launcher-errors"><thead><tr></tr></thead><tbody></tbody>
</table></div>
"""

_SCRIPT = """
"use strict";
const STATUSES = ["success", "error", "crash", "cancel", "unresolved"];
const STATES = ["launching", "idle", "busy", "leaving", "gone"];
const $ = (id) => document.getElementById(id);
let chosen = "";  // a controller's name, or "" for all of them together
let samples = [];  // [seconds, tasks resolved] of the chosen view, the last two minutes

const integer = (n) => n == null ? "" : Math.round(n).toLocaleString();
const seconds = (s) => s == null ? "" : s < 100 ? s.toFixed(1) : integer(s);
const bytes = (b) => b == null ? "" : b < 2 ** 30 ? (b / 2 ** 20).toFixed(0) + " MiB"
  : (b / 2 ** 30).toFixed(2) + " GiB";
const clock = (t) => t == null ? "" : new Date(t * 1000).toLocaleTimeString([], {hour12: false});
const sum = (items, key) => items.reduce((total, item) => total + item[key], 0);

function combine(controllers) {
  // Several controllers seen as one: counters add up, lists join.
  if (controllers.length === 1) return controllers[0];
  const counts = {}, states = {};
  for (const crew of controllers) {
    for (const [key, value] of Object.entries(crew.counts))
      counts[key] = (counts[key] || 0) + value;
    for (const [key, value] of Object.entries(crew.workers_by_state))
      states[key] = (states[key] || 0) + value;
  }
  const tagged = (key) => controllers.flatMap(
    (crew) => crew[key].map((row) => ({...row, controller: crew.name})));
  return {
    name: controllers.map((crew) => crew.name).join(", "),
    state: controllers.every((crew) => crew.state === "running") ? "running" : "mixed",
    counts, workers_by_state: states,
    queued: sum(controllers, "queued"), launching: sum(controllers, "launching"),
    launches: sum(controllers, "launches"), launch_failures: sum(controllers, "launch_failures"),
    workers_total: sum(controllers, "workers_total"),
    workers: tagged("workers"), failures: tagged("failures"),
    launcher_errors: tagged("launcher_errors").sort((a, b) => b.time - a.time),
  };
}

function text(id, value) { $(id).textContent = value; }

function bar(id, legend, keys, values) {
  const total = keys.reduce((all, key) => all + (values[key] || 0), 0);
  $(id).replaceChildren(...keys.filter((key) => values[key]).map((key) => {
    const part = document.createElement("span");
    part.className = key;
    part.style.width = (100 * values[key] / total) + "%";
    return part;
  }));
  $(legend).replaceChildren(...keys.map((key) => {
    const item = document.createElement("span");
    const dot = document.createElement("span");
    dot.className = "dot " + key;
    const count = document.createElement("b");
    count.id = legend.replace("legend", "") + key;
    count.textContent = integer(values[key] || 0);
    item.append(dot, key + " ", count);
    return item;
  }));
}

function table(id, columns, rows) {
  // Every cell is set with textContent: names, errors and reasons are user data.
  const head = $(id).tHead.rows[0];
  head.replaceChildren(...columns.map(([title]) => {
    const th = document.createElement("th");
    th.textContent = title;
    return th;
  }));
  $(id).tBodies[0].replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    for (const [, value, kind] of columns) {
      const td = document.createElement("td");
      td.className = kind || "";
      td.textContent = value(row) ?? "";
      tr.append(td);
    }
    return tr;
  }));
}

function rate(now, resolved) {
  if (samples.length && resolved < samples[samples.length - 1][1]) samples = [];
  samples.push([now, resolved]);
  samples = samples.filter(([t]) => t > now - 120);
  const recent = samples.filter(([t]) => t >= now - 5);
  const [t0, r0] = recent[0];
  text("rate", now > t0 ? ((resolved - r0) / (now - t0)).toFixed(1) : "\\u2013");
  const steps = samples.slice(1).map(([t, r], i) =>
    [t, (r - samples[i][1]) / Math.max(t - samples[i][0], 1e-3)]);
  const top = Math.max(1, ...steps.map(([, r]) => r));
  $("spark").setAttribute("points", steps.map(([t, r]) =>
    (100 - (now - t) / 1.2).toFixed(2) + "," + (27 - 26 * r / top).toFixed(2)).join(" "));
}

function choices(controllers) {
  const names = controllers.map((crew) => crew.name);
  if (!names.includes(chosen)) chosen = "";
  $("choice").hidden = names.length < 2;
  const select = $("controller");
  const wanted = ["", ...names];
  if ([...select.options].map((option) => option.value).join("\\n") !== wanted.join("\\n")) {
    select.replaceChildren(...wanted.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name || "all";
      return option;
    }));
    select.value = chosen;
  }
}

function show(state) {
  choices(state.controllers);
  const view = combine(state.controllers.filter((crew) => !chosen || crew.name === chosen));
  const counts = view.counts, several = state.controllers.length > 1 && !chosen;
  text("title", "· " + view.name + (view.state === "running" ? "" : " (" + view.state + ")"));
  document.title = "batchcrew · " + view.name;
  for (const key of ["tasks", "unresolved", "workers"]) text("count-" + key, integer(counts[key]));
  text("queued", integer(view.queued));
  text("running", integer(counts.unresolved - view.queued));
  text("launches", integer(view.launches));
  text("launch-failures", integer(view.launch_failures));
  rate(state.time, counts.tasks - counts.unresolved);
  bar("status-bar", "status-legend", STATUSES, counts);
  bar("state-bar", "state-legend", STATES, view.workers_by_state);
  const where = several ? [["controller", (r) => r.controller]] : [];
  table("workers", [...where,
    ["worker", (w) => w.worker], ["state", (w) => w.state], ["level", (w) => w.level, "number"],
    ["host", (w) => w.host], ["pid", (w) => w.pid, "number"], ["job", (w) => w.job_id],
    ["tasks", (w) => integer(w.tasks), "number"],
    ["busy s", (w) => seconds(w.seconds), "number"],
    ["errors", (w) => integer(w.errors), "number"],
    ["crashes", (w) => integer(w.crashes), "number"],
    ["memory", (w) => bytes(w.rss), "number"], ["cpu s", (w) => seconds(w.cpu), "number"],
    ["launched", (w) => clock(w.launched)], ["ended", (w) => clock(w.ended)],
    ["output", (w) => w.state === "busy" ? w.output_tail : "", "text"],
    ["reason", (w) => w.reason, "text"]], view.workers);
  text("workers-note", view.workers.length < view.workers_total
    ? "(showing " + integer(view.workers.length) + " of " + integer(view.workers_total) + ")" : "");
  table("failures", [...where, ["task", (f) => f.name, "text"], ["status", (f) => f.status],
    ["error", (f) => f.error, "text"], ["worker", (f) => f.worker],
    ["seconds", (f) => seconds(f.seconds), "number"]], view.failures);
  table("launcher-errors", [...where, ["time", (e) => clock(e.time)], ["what", (e) => e.what],
    ["why", (e) => e.why, "text"]], view.launcher_errors);
}

let last = null;
async function refresh() {
  try {
    const response = await fetch("state.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    last = await response.json();
    show(last);
    text("status", "updated " + clock(last.time));
    $("status").className = "muted";
  } catch (error) {
    text("status", "cannot reach the controller (closed?): " + error.message);
    $("status").className = "bad";
  } finally {
    setTimeout(refresh, 1000);
  }
}
$("controller").addEventListener("change", (event) => {
  chosen = event.target.value;
  samples = [];
  if (last) show(last);
});
refresh();
"""


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


_PAGE = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<link rel="icon" href="data:,">\n<title>batchcrew</title>\n'
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n"
    "</html>\n"
).encode()
"""The dashboard page: no external asset, so it works on a closed network."""

# Only the page's own style and script run (by their hashes), and it may only fetch from its
# own origin: even a string that slipped past textContent could not run or send anything.
_POLICY = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_COMMON = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": _POLICY,
    **_COMMON,
}
_JSON_HEADERS = {"Content-Type": "application/json", **_COMMON}
