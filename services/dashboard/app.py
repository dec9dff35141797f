"""The dashboard's web app (FastAPI): one page, its JSON API, the live event stream and the alert images.

Flow step: Redis + object store + ``live.py`` -> browser; browser actions -> ``store.FeedbackStore`` (-> Kafka
``feedback`` through the outbox). Every route but ``/login``, ``/static/app.css`` and the health endpoints requires the
token (bearer) or a login session (``auth.py``); actions from a session also need its CSRF token. The page renders
every text from a message with ``textContent`` (never as markup) and a strict Content-Security-Policy forbids inline
scripts, so markup in a record shows as text.

Routes: ``GET /`` page, ``GET|POST /login``, ``POST /logout``, ``GET /api/alerts`` (history: camera, since, until,
status, page, page_size), ``GET /api/alerts/{id}``, ``GET /api/alerts/{id}/image/{frame|heatmap|outline|thumb}``,
``POST /api/alerts/{id}/feedback`` (``{"action": ..., "note": ...}``), ``GET /api/cameras``, ``GET /api/stream``
(server-sent events ``alert``, ``feedback``, ``tiles``, ``status``), ``/healthz``, ``/readyz``, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services import _observability as obs
from services._object_store import ObjectStore, stored_frame
from services._overlays import OverlayStore
from services._redis import AlertStore, InspectionStore, OverrideStore
from services.contracts.feedback import FeedbackAction, FeedbackRecord, new_feedback_id
from services.dashboard import images, metrics
from services.dashboard.auth import COOKIE_NAME, CSRF_HEADER, Authenticator, Principal, clean_actor
from services.dashboard.live import Hub, LiveState, sse
from services.dashboard.store import STATUSES, AlertHistory, FeedbackStore, summary

STATIC = Path(__file__).parent / "static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class DashboardContext:
    """Everything the routes need (built by ``__main__.serve``, or by tests)."""

    auth: Authenticator
    redis_client: redis.Redis
    store: ObjectStore
    live: LiveState
    hub: Hub
    health: obs.Health
    log: Any
    key_prefix: str = ""
    alert_ttl_s: int = 7 * 86400
    feedback_ttl_s: int = 90 * 86400
    feed_size: int = 50
    page_size: int = 25
    scan_limit: int = 5000
    tick_s: float = 1.0
    cookie_secure: bool = False
    last_tiles: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.alerts = AlertStore(self.redis_client, self.alert_ttl_s, self.key_prefix)
        self.feedback = FeedbackStore(self.redis_client, self.feedback_ttl_s, self.key_prefix)
        self.history = AlertHistory(self.alerts, self.feedback, self.scan_limit)
        self.inspections = InspectionStore(self.redis_client, prefix=self.key_prefix)
        self.overrides = OverrideStore(self.redis_client, self.key_prefix)
        self.overlays = OverlayStore(self.redis_client, self.store, self.key_prefix)

    def tick(self) -> tuple[list[dict[str, Any]], dict[str, bool]]:
        """Redis ping + what tiles need from Redis (runs on a worker thread)."""
        overrides: dict[str, dict[str, float]] = {}
        per_cam: dict[str, int] = {}
        try:
            self.redis_client.ping()
            overrides = self.overrides.all()
            since = datetime.now(UTC).timestamp() - 3600
            cams = set(self.history.cameras()) | {t["camera_id"] for t in self.last_tiles}
            per_cam = {cam: self.history.alerts_since(cam, since) for cam in cams}
            if not self.live.redis_ok:
                self.log.info("redis_connected")
            self.live.set_dependency("redis", True)
        except redis.RedisError as exc:
            if self.live.redis_ok:
                self.log.warning("redis_unavailable", error=repr(exc)[:300])
            self.live.set_dependency("redis", False)
            per_cam = {t["camera_id"]: t["alerts_last_hour"] for t in self.last_tiles}
            overrides = {t["camera_id"]: {"min_score": t["threshold"]} for t in self.last_tiles
                         if t["threshold_source"] == "override"}
        self.last_tiles = self.live.snapshot(overrides, per_cam)
        return self.last_tiles, self.live.status()


class FeedbackIn(BaseModel):
    action: FeedbackAction
    note: str = Field("", max_length=500)


def _parse_time(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{name}: not a time (ISO 8601 or POSIX seconds): {value[:40]!r}") from None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def create_app(ctx: DashboardContext) -> FastAPI:
    """The app; ``ctx.hub`` is bound to the server's loop and the tile tick runs while it serves."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.hub.bind(asyncio.get_running_loop())

        async def ticker() -> None:
            while True:
                tiles, status = await run_in_threadpool(ctx.tick)
                ctx.hub.publish("tiles", tiles)
                ctx.hub.publish("status", status)
                await asyncio.sleep(ctx.tick_s)

        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            ctx.hub.close()

    app = FastAPI(title="inspection dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    # ------------------------------------------------------------------------------------------- plumbing
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        ctx.live.set_dependency("redis", False)
        return JSONResponse({"detail": f"Redis unavailable ({type(exc).__name__}); try again shortly"}, 503)

    def who(request: Request) -> Principal | None:
        return (ctx.auth.check_bearer(request.headers.get("authorization"))
                or ctx.auth.verify_cookie(request.cookies.get(COOKIE_NAME)))

    def require(request: Request) -> Principal:
        p = who(request)
        if p is None:
            raise HTTPException(401, "authentication required (log in, or send Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        return p

    def require_action(request: Request) -> Principal:
        p = require(request)
        origin = request.headers.get("origin")
        if p.nonce is not None and origin and urlparse(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "cross-origin action refused")
        if not ctx.auth.check_csrf(p, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token (reload the page)")
        return p

    def login_page(error: str = "", status: int = 200) -> HTMLResponse:
        body = (STATIC / "login.html").read_text().replace("{{error}}", html.escape(error))
        return HTMLResponse(body, status)

    # ------------------------------------------------------------------------------------------- health
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        ok = ctx.health.live
        return PlainTextResponse("ok\n" if ok else "loop stalled\n", 200 if ok else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> PlainTextResponse:
        ok = ctx.health.ready and ctx.health.live
        return PlainTextResponse(f"{ctx.health.reason}\n", 200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------------------------------- login
    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> HTMLResponse:
        return login_page()

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name, token = (form.get("name") or [""])[0], (form.get("token") or [""])[0]
        if not ctx.auth.check_token(token):
            # what was typed is not logged: a token pasted into the wrong field must not end up in the logs
            ctx.log.warning("login_refused", client=request.client.host if request.client else "")
            return login_page("wrong token", 401)
        try:
            actor = clean_actor(name)
        except ValueError as exc:
            return login_page(str(exc), 400)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE_NAME, ctx.auth.issue(actor), max_age=ctx.auth.session_ttl_s, httponly=True,
                            samesite="strict", secure=ctx.cookie_secure, path="/")
        ctx.log.info("login", actor=actor)
        return response

    @app.post("/logout")
    def logout(request: Request) -> Response:
        require_action(request)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    # ------------------------------------------------------------------------------------------- page
    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        p = who(request)
        if p is None:
            return login_page("", 401)
        body = (STATIC / "index.html").read_text()
        body = body.replace("{{csrf}}", html.escape(ctx.auth.csrf_for(p) if p.nonce else ""))
        body = body.replace("{{actor}}", html.escape(p.actor)).replace("{{feed_size}}", str(ctx.feed_size))
        body = body.replace("{{page_size}}", str(ctx.page_size))
        return HTMLResponse(body)

    @app.get("/static/{name}")
    def static(name: str, request: Request) -> Response:
        kinds = {"app.css": "text/css", "app.js": "text/javascript"}
        if name not in kinds:
            raise HTTPException(404, "not found")
        if name != "app.css":  # the stylesheet also dresses the login page
            require(request)
        return Response((STATIC / name).read_bytes(), media_type=kinds[name])

    # ------------------------------------------------------------------------------------------- API
    @app.get("/api/alerts")
    def alerts(request: Request, camera: str | None = None, since: str | None = None, until: str | None = None,
               status: str | None = None, page: int = Query(1, ge=1, le=100000),
               page_size: int | None = Query(None, ge=1, le=500)) -> dict[str, Any]:
        require(request)
        if status and status not in STATUSES:
            raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}")
        res = ctx.history.query(camera or None, _parse_time(since, "since"), _parse_time(until, "until"),
                                status or None, page, page_size or ctx.page_size)
        return {"items": res.items, "total": res.total, "page": res.page, "page_size": res.page_size,
                "truncated": res.truncated}

    def _alert(alert_id: str):
        if len(alert_id) > 64:
            raise HTTPException(404, "no such alert")
        alert = ctx.alerts.get(alert_id)
        if alert is None:
            raise HTTPException(404, "no such alert (unknown or expired)")
        return alert

    @app.get("/api/alerts/{alert_id}")
    def alert_detail(alert_id: str, request: Request) -> dict[str, Any]:
        require(request)
        alert = _alert(alert_id)
        state = ctx.feedback.get(alert_id)
        insp = ctx.inspections.get(alert.camera_id, alert.frame_id) or {}
        has_frame = stored_frame(ctx.store, alert.camera_id, alert.frame_id) is not None
        return {**summary(alert, state), "frame_id": alert.frame_id, "pred_score_raw": alert.pred_score_raw,
                "sensitivity": alert.sensitivity, "debounce": alert.debounce, "model_version": alert.model_version,
                "noise_step": int(insp["noise_step"]) if insp.get("noise_step") else None,
                "boxes": [b.model_dump() for b in alert.boxes], "has_frame": has_frame,
                "note": (state or {}).get("note", ""),
                "overlay_version": int(insp["overlay_version"]) if insp.get("overlay_version") else None,
                "teaching": ctx.overlays.teaching(alert.product_id, alert_id) if alert.product_id else None}

    @app.get("/api/alerts/{alert_id}/image/{layer}")
    def alert_image(alert_id: str, layer: str, request: Request) -> Response:
        require(request)
        if layer not in images.LAYERS:
            raise HTTPException(404, f"unknown layer (one of {', '.join(images.LAYERS)})")
        alert = _alert(alert_id)
        try:
            png = images.render(ctx.store, alert, layer)
        except images.ImageMissing as exc:
            raise HTTPException(404, f"{layer} not available: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - store down (ObjectStoreUnavailable, botocore errors)
            ctx.log.warning("object_store_failed", alert_id=alert_id, layer=layer, error=repr(exc)[:300])
            raise HTTPException(503, "object store unavailable; try again shortly") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.post("/api/alerts/{alert_id}/feedback")
    def feedback(alert_id: str, body: FeedbackIn, request: Request) -> dict[str, Any]:
        p = require_action(request)
        alert = _alert(alert_id)
        rec = FeedbackRecord(feedback_id=new_feedback_id(), alert_id=alert.alert_id, frame_id=alert.frame_id,
                             camera_id=alert.camera_id, line_id=alert.line_id, product_id=alert.product_id,
                             action=body.action, actor=p.actor, at=datetime.now(UTC), note=body.note,
                             pred_score=alert.pred_score, pred_score_raw=alert.pred_score_raw,
                             threshold=alert.threshold, model_version=alert.model_version)
        ctx.feedback.record(rec)
        metrics.FEEDBACK.labels(rec.action).inc()
        ctx.log.info("feedback", alert_id=alert_id, camera_id=alert.camera_id, action=rec.action, actor=p.actor)
        event = {"alert_id": alert_id, "status": rec.action, "status_by": rec.actor, "status_at": rec.at.isoformat()}
        ctx.hub.publish("feedback", event)
        return {**event, "feedback_id": rec.feedback_id}

    @app.get("/api/cameras")
    def cameras(request: Request) -> dict[str, Any]:
        require(request)
        return {"cameras": ctx.last_tiles, "status": ctx.live.status()}

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        require(request)
        queue = ctx.hub.subscribe()

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                yield sse("status", ctx.live.status())
                yield sse("tiles", ctx.last_tiles)
                while True:
                    try:
                        message = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
            finally:
                ctx.hub.unsubscribe(queue)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app
