"""The console as a plain ASGI app (Starlette): pages, their ``.json`` twins, live rollouts.

Every page is one rendering of a dict from ``console.queries``; the same URL
plus ``.json`` returns that dict. Reads need nothing. Actions (abort a
rollout, revoke a device) need the console token (``paoding-edge keys
console-token``) in the ``X-Paoding-Token`` header or a ``token`` form field,
and a same-origin request: a page on another site cannot post here, and the
console sets no cookie a browser could send on its own.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from console import queries
from console.svg import chart, scatter
from core.errors import ConfigError, PaodingError
from fleet.registry import Registry

HERE = Path(__file__).parent
# starts a rollout of {profile: model bytes} in the background; returns its id once planned
Starter = Callable[[dict[str, bytes]], str]
LIVE_STATES = ("running", "aborting")
NO_TOKEN = ("actions are off: this console was started without a token "
            "(make one with `paoding-edge keys console-token DIR`, then "
            "`paoding-edge console --token DIR/console.token`)")
BAD_TOKEN = ("refused: this action needs the console token (the X-Paoding-Token header or "
             "the token field), and the one given is missing or wrong")
CROSS_SITE = "refused: a cross-site request (its Origin is not this console)"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, time.time() - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def latency_charts(data: dict[str, Any]) -> dict[str, str]:
    """The device page's two charts: p50/p90 and memory per deployment, predicted, budget."""
    deps = [d for d in data["deployments"] if d["measured"]["p90_ms"] is not None
            or d["predicted"]["p90_ms"] is not None]
    labels = [time.strftime("%m-%d %H:%M", time.gmtime(d["started_at"])) for d in deps]
    budgets = data["budgets"] or {}
    return {
        "latency": chart(
            "latency per deployment", labels,
            [("p50", [d["measured"]["p50_ms"] for d in deps]),
             ("p90", [d["measured"]["p90_ms"] for d in deps]),
             ("predicted", [d["predicted"]["p90_ms"] for d in deps])],
            unit="ms", budget=budgets.get("p90_ms"), chart_id="latency-chart"),
        "memory": chart(
            "peak memory per deployment", labels,
            [("measured", [d["measured"]["memory_mb"] for d in deps]),
             ("predicted", [d["predicted"]["memory_mb"] for d in deps])],
            unit="MB", budget=budgets.get("memory_mb"), chart_id="memory-chart"),
    }


def calibration_chart(data: dict[str, Any]) -> str:
    """A profile's predicted against measured p90, before and (when calibrated) after."""
    pairs = data["pairs"]
    series = [("before", [(p["measured_p90_ms"], p["before_p90_ms"]) for p in pairs])]
    if data["in_use"]["calibrated"]:
        series.append(("after", [(p["measured_p90_ms"], p["after_p90_ms"]) for p in pairs]))
    return scatter("p90 latency per report: predicted against measured", series, unit="ms",
                   size=380, chart_id="calibration-chart")


class Console:
    """The app's state: one registry connection, the token (None: read-only), allowed hosts."""

    def __init__(self, db: str | Path, *, token: str | None = None,
                 broker_dir: str | Path | None = None, starter: Starter | None = None) -> None:
        self.registry = Registry(db)
        self.token = token
        self.broker_dir = broker_dir
        self.starter = starter
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters.update(ago=_ago, when=_when, num=_num,
                           stamp=lambda ts: time.strftime("%m-%d %H:%M:%S", time.gmtime(ts)),
                           short=lambda s: (s or "-")[:12])
        label = self.registry.label
        env.globals.update(actions=token is not None,
                           db_label=label if "://" in label else Path(label).name)

    def close(self) -> None:
        self.registry.close()

    # -- pages ------------------------------------------------------------------------------

    def page(self, request: Request, name: str, template: str,
             read: Callable[[], dict[str, Any] | None], extra: Callable[[dict], dict] | None = None
             ) -> Response:
        """``read()`` as JSON (URL ends in .json) or rendered into ``template``; 404 on None."""
        want_json = request.url.path.endswith(".json")
        try:
            data = read()
        except ConfigError as exc:
            return self._error(request, 400, str(exc), want_json)
        if data is None:
            return self._error(request, 404, f"no {name} here", want_json)
        if want_json:
            return JSONResponse(data)
        context = {"data": data, "json_url": request.url.path + ".json"
                   + (f"?{request.url.query}" if request.url.query else "")}
        if extra:
            context.update(extra(data))
        return self.templates.TemplateResponse(request, template, context)

    def _error(self, request: Request, status: int, message: str, want_json: bool) -> Response:
        if want_json or "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status)
        return self.templates.TemplateResponse(request, "error.html", {"message": message},
                                               status_code=status)

    def fleet(self, request: Request) -> Response:
        q = request.query_params

        def read() -> dict[str, Any]:
            try:
                page = int(q.get("page", "1"))
            except ValueError:
                raise ConfigError(f"page must be a number, got {q.get('page')!r}") from None
            return queries.fleet(self.registry, page=page, profile=q.get("profile") or None,
                                 state=q.get("state") or None)

        return self.page(request, "fleet", "fleet.html", read)

    def device(self, request: Request) -> Response:
        device_id = _strip_json(request.path_params["device_id"])
        return self.page(request, f"device {device_id!r}", "device.html",
                         lambda: queries.device(self.registry, device_id),
                         lambda data: {"charts": latency_charts(data)})

    def device_chart(self, request: Request) -> Response:
        data = queries.device(self.registry, request.path_params["device_id"])
        if data is None:
            return Response("no such device", status_code=404)
        return Response(latency_charts(data)["latency"], media_type="image/svg+xml")

    def rollout(self, request: Request) -> Response:
        rollout_id = _strip_json(request.path_params["rollout_id"])
        return self.page(request, f"rollout {rollout_id!r}", "rollout.html",
                         lambda: queries.rollout(self.registry, rollout_id))

    def model(self, request: Request) -> Response:
        sha = _strip_json(request.path_params["sha256"])
        return self.page(request, f"model {sha[:12]}", "model.html",
                         lambda: queries.model(self.registry, sha),
                         lambda data: {"profiles": queries.profiles(self.registry)})

    def profiles(self, request: Request) -> Response:
        return self.page(request, "profiles", "profiles.html",
                         lambda: {"profiles": [{k: v for k, v in d.items() if k != "pairs"}
                                               for d in queries.calibration(self.registry)
                                               .values()]})

    def profile(self, request: Request) -> Response:
        pid = _strip_json(request.path_params["profile_id"])
        return self.page(request, f"measurement of profile {pid!r}", "profile.html",
                         lambda: queries.calibration(self.registry, pid).get(pid),
                         lambda data: {"chart": calibration_chart(data)})

    async def rollout_events(self, request: Request) -> Response:
        """Server-sent events: the rollout's JSON each time it changes, until it ends."""
        rollout_id = request.path_params["rollout_id"]
        first = await run_in_threadpool(queries.rollout, self.registry, rollout_id)
        if first is None:
            return JSONResponse({"error": f"no rollout {rollout_id!r} here"}, status_code=404)

        async def stream() -> AsyncIterator[str]:
            last, idle = None, 0.0
            while True:
                data = await run_in_threadpool(queries.rollout, self.registry, rollout_id)
                text = json.dumps(data, sort_keys=True)
                if text != last:
                    yield f"event: rollout\ndata: {text}\n\n"
                    last, idle = text, 0.0
                elif idle >= 15:
                    yield ": still here\n\n"
                    idle = 0.0
                if data is None or data["state"] not in LIVE_STATES:
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.3)
                idle += 0.3

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # -- actions ----------------------------------------------------------------------------

    async def _authorised(self, request: Request) -> str | None:
        """None when the request may act; else why not."""
        if self.token is None:
            return NO_TOKEN
        origin = request.headers.get("origin")
        if request.headers.get("sec-fetch-site") == "cross-site" or (
                origin and urlsplit(origin).netloc != request.headers.get("host")):
            return CROSS_SITE
        given = request.headers.get("x-paoding-token")
        if given is None:
            form = await request.form()
            value = form.get("token")
            given = value if isinstance(value, str) else None
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return BAD_TOKEN
        return None

    async def act(self, request: Request, what: Callable[[], str], back: str) -> Response:
        why = await self._authorised(request)
        if why is not None:
            return self._action_result(request, 403, why, back)
        try:
            message = await run_in_threadpool(what)
        except PaodingError as exc:
            return self._action_result(request, 409, str(exc), back)
        return self._action_result(request, 200, message, back)

    def _action_result(self, request: Request, status: int, message: str, back: str
                       ) -> Response:
        ok = status == 200
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": ok, "message": message}, status_code=status)
        return self.templates.TemplateResponse(
            request, "action.html", {"ok": ok, "message": message, "back": back},
            status_code=status)

    async def abort(self, request: Request) -> Response:
        from fleet.orchestrator import request_abort

        rollout_id = request.path_params["rollout_id"]

        def run() -> str:
            request_abort(self.registry, rollout_id)
            return (f"rollout {rollout_id}: abort requested; its host process cancels the "
                    "wave in progress")

        return await self.act(request, run, f"/rollout/{rollout_id}")

    async def start(self, request: Request) -> Response:
        sha = request.path_params["sha256"]
        form = await request.form()
        profile = form.get("profile")

        def run() -> str:
            if self.starter is None:
                raise ConfigError("starting a rollout needs the console started with a "
                                  "signing key (--key) and its broker (--broker)")
            if not isinstance(profile, str) or profile not in queries.profiles(self.registry):
                raise ConfigError(f"no device of profile {profile!r} in the fleet")
            data = queries.model_bytes(self.registry, sha)
            if data is None:
                raise ConfigError(f"the bytes of model {sha[:12]} are not at hand (neither "
                                  "published before nor at the path its lineage names)")
            rollout_id = self.starter({profile: data})
            return f"rollout {rollout_id} started: /rollout/{rollout_id}"

        return await self.act(request, run, f"/model/{sha}")

    async def revoke(self, request: Request) -> Response:
        from fleet.enrol import revoke_device

        device_id = request.path_params["device_id"]

        def run() -> str:
            removed = revoke_device(self.registry, device_id, self.broker_dir)
            return f"revoked {device_id}: {', '.join(removed)} removed"

        return await self.act(request, run, f"/device/{device_id}")


def _strip_json(name: str) -> str:
    return name[:-5] if name.endswith(".json") else name


def create_app(db: str | Path, *, token: str | None = None,
               allowed_hosts: list[str] | None = None,
               broker_dir: str | Path | None = None, starter: Starter | None = None
               ) -> Starlette:
    """The console over the fleet record ``db``; ``token`` None keeps it read-only.

    ``starter`` (given by the command, which holds the signing key and the broker)
    lets a token holder start a rollout of a model; without it the console cannot.
    """
    console = Console(db, token=token, broker_dir=broker_dir, starter=starter)
    routes = [
        Route("/", lambda r: RedirectResponse("/fleet")),
        Route("/fleet", console.fleet),
        Route("/fleet.json", console.fleet),
        Route("/device/{device_id}/latency.svg", console.device_chart),
        Route("/device/{device_id}/revoke", console.revoke, methods=["POST"]),
        Route("/device/{device_id}", console.device),
        Route("/rollout/{rollout_id}/events", console.rollout_events),
        Route("/rollout/{rollout_id}/abort", console.abort, methods=["POST"]),
        Route("/rollout/{rollout_id}", console.rollout),
        Route("/model/{sha256}/rollout", console.start, methods=["POST"]),
        Route("/model/{sha256}", console.model),
        Route("/profiles", console.profiles),
        Route("/profiles.json", console.profiles),
        Route("/profile/{profile_id}", console.profile),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "::1"]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        console.close()

    app = Starlette(routes=routes,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
                    lifespan=lifespan)
    app.state.console = console
    return app
