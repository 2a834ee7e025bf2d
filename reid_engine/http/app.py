"""The ASGI app: API routes, JSON errors from the service's error map, the web page as static files."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ReidEngineError
from ..service import AuthError, error_body, open_engine, outcome_of
from .deps import EngineHolder, ServeConfig
from .routes import router
from .uploads import BodyLimit

log = logging.getLogger(__name__)

#: form fields and multipart framing on top of the images themselves
_FORM_OVERHEAD = 64 * 1024
#: the page loads only its own files; images may come from blob: URLs of dropped files
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def static_dir() -> Any:
    """The web page's files, shipped inside the package."""
    return resources.files("reid_engine.http") / "static"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def create_app(config: ServeConfig) -> FastAPI:
    """The app serving one index: the engine opens now (errors surface at start), closes at shutdown."""
    engine = config.engine or open_engine(config.index, weights=config.weights, device=config.device)
    holder = EngineHolder(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if config.engine is None:
            holder.close()

    app = FastAPI(
        title="reid-engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Person re-identification search over one index: query by image or crop, filter by camera, "
                    "time and attributes, browse tracks of footage. Errors are JSON `{error, type}`.",
    )
    app.state.config = config
    app.state.holder = holder
    app.state.engine_path = str(engine.path)

    @app.exception_handler(ReidEngineError)
    async def _library_error(request: Request, exc: ReidEngineError) -> JSONResponse:
        status = outcome_of(exc).http_status
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc), "type": "RequestValidationError"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "type": "HTTPException"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"error": f"internal error: {type(exc).__name__}", "type": "InternalError"}, status_code=500
        )

    app.include_router(router)

    static = static_dir()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        """The operations of /openapi.json, rendered by a page shipped in the package (no CDN)."""
        return FileResponse(str(static / "docs.html"), media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        path = request.url.path
        if path in ("/", "/docs") or path.startswith("/static/"):
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes + _FORM_OVERHEAD)
    return app
