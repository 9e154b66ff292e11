"""The HTTP face of ``tlkit serve``: Label Studio's ML backend API over a :class:`Backend`.

Routes, as Label Studio 1.23 calls them: ``GET /health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``POST /train`` (older Label Studio versions' training trigger). Bad requests
get a 4xx with ``{"error": "<one line>"}`` and change nothing. Optional HTTP basic auth.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tlkit.errors import TlkitError
from tlkit.serve.backend import Backend, BadRequest

log = logging.getLogger(__name__)


def create_app(backend: Backend, auth: tuple[str, str] | None = None):
    """A FastAPI app serving ``backend`` (with HTTP basic auth when ``auth`` is ``(user, password)``)."""
    app = FastAPI(title="tlkit ML backend", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if auth is not None and not _authorized(request.headers.get("authorization"), auth):
            return JSONResponse({"error": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="tlkit"'})
        return await call_next(request)

    async def body(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"{}")
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON: {e}") from None

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, e: BadRequest):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(TlkitError)
    async def _refused(request: Request, e: TlkitError):
        log.warning("%s %s refused: %s", request.method, request.url.path, e)
        return JSONResponse({"error": str(e)}, status_code=422)

    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "tlkit", **backend.status()}

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        _learn_project(backend, (await body(request)).get("project"))
        return {"model_version": backend.version}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        req = await body(request)
        if not isinstance(req, dict) or not isinstance(req.get("tasks"), list):
            raise BadRequest("/predict needs a JSON object with a 'tasks' list")
        _learn_project(backend, req.get("project"))
        results = await run_in_threadpool(backend.predict, req["tasks"], req.get("label_config"))
        backend.after_predict()
        return {"results": results, "model_version": backend.version}

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        payload = await body(request)
        if isinstance(payload, dict):
            _learn_project(backend, (payload.get("project") or {}).get("id") if isinstance(payload.get("project"), dict) else None)
        return await run_in_threadpool(backend.handle_event, payload)

    @app.post("/train")
    def train() -> dict[str, Any]:
        backend.request_retrain()
        return {"status": "retrain queued"}

    return app


def _learn_project(backend: Backend, project: Any) -> None:
    """Remember Label Studio's project id ('12.1700000000' in /setup and /predict, 12 in webhooks)."""
    if backend.client is None or project in (None, ""):
        return
    try:
        backend.client.project = int(str(project).split(".")[0])
    except ValueError:
        pass


def _authorized(header: str | None, auth: tuple[str, str]) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, auth[0]) and hmac.compare_digest(password, auth[1])
