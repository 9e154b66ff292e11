"""The HTTP face of ``tlkit serve``: Label Studio's ML backend API over a :class:`Backend`.

Routes, as Label Studio 1.23 calls them: ``GET /health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``POST /train`` (older Label Studio versions' training trigger). Bad requests
get a 4xx with ``{"error": "<one line>"}`` and change nothing: bodies that are not JSON, nested
too deeply or larger than :data:`MAX_BODY_BYTES` (413), paths outside the pool (400), a project
that cannot be written (409). Optional HTTP basic auth (user and password compared as UTF-8 bytes
in constant time; any malformed ``Authorization`` header is a 401).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tlkit.core.errors import TlkitError
from tlkit.serve.backend import Backend, BadRequest

log = logging.getLogger(__name__)

#: The largest request body accepted (``TLKIT_SERVE_MAX_BODY`` bytes; default 64 MiB: a /predict
#: of 100,000 tasks is about 20 MB).
MAX_BODY_BYTES = int(os.environ.get("TLKIT_SERVE_MAX_BODY", 64 << 20))


class TooLarge(BadRequest):
    """A request body over :data:`MAX_BODY_BYTES` (HTTP 413)."""


def create_app(backend: Backend, auth: tuple[str, str] | None = None):
    """A FastAPI app serving ``backend`` (with HTTP basic auth when ``auth`` is ``(user, password)``)."""
    app = FastAPI(title="tlkit ML backend", docs_url=None, redoc_url=None, openapi_url=None)

    secret = None if auth is None else (auth[0].encode("utf-8", "surrogateescape"), auth[1].encode("utf-8", "surrogateescape"))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if secret is not None and not _authorized(request.headers.get("authorization"), secret):
            return JSONResponse({"error": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="tlkit"'})
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"the request body is over {MAX_BODY_BYTES:,} bytes (or its length is "
                                 "unreadable); send fewer tasks per request"}, status_code=413)
        return await call_next(request)

    async def body(request: Request) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a Content-Length
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise TooLarge(f"the request body is over {MAX_BODY_BYTES:,} bytes; send fewer tasks per request")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"{}")
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRequest("the request body is nested too deeply") from None

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, e: BadRequest):
        return JSONResponse({"error": str(e)}, status_code=413 if isinstance(e, TooLarge) else 400)

    @app.exception_handler(OSError)
    async def _unwritable(request: Request, e: OSError):
        log.error("%s %s: %s", request.method, request.url.path, e)
        return JSONResponse({"error": f"the project cannot be written ({e.strerror or e}); nothing was changed; "
                             "make the project folder writable"}, status_code=409)

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
        req = await body(request)
        if not isinstance(req, dict):
            raise BadRequest("/setup needs a JSON object")
        _learn_project(backend, req.get("project"))
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
        if not isinstance(payload, dict):
            raise BadRequest("the webhook body must be a JSON object")
        project = payload.get("project")
        _learn_project(backend, project.get("id") if isinstance(project, dict) else None)
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


def _authorized(header: str | None, secret: tuple[bytes, bytes]) -> bool:
    """Whether a Basic ``Authorization`` header carries ``secret`` (user, password as UTF-8 bytes).

    Compares bytes, so any character works in a password; a header that is not ASCII, not base64 or
    has no colon is simply not authorized.
    """
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        user, sep, password = base64.b64decode(header[6:].strip().encode("ascii"), validate=True).partition(b":")
    except ValueError:  # not ASCII, or not base64 (binascii.Error is a ValueError)
        return False
    user_ok = hmac.compare_digest(user, secret[0])
    return bool(sep) and hmac.compare_digest(password, secret[1]) and user_ok
