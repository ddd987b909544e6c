"""The HTTP side: the page, `POST /v1/captions`, `GET /healthz`, `GET /v1/info`, the demo
pictures and local API docs. Every error is JSON `{"detail": "what is wrong"}` with a 4xx/5xx
status; the server goes on serving.

No request names a path: uploads are read from the body into memory (never written, unless
--keep-uploads), and demo pictures are addressed by their index in the server's own list.
FastAPI's stock /docs page loads Swagger UI from a CDN, so it is replaced by a small local
page that lists the endpoints from /openapi.json.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hin.errors import MissingExtraError, pip_install
from hin.serve.explanations import explain_available
from hin.serve.inputs import (
    OPTIONS,
    RequestError,
    check_declared_size,
    decode_picture,
    parse_options,
    read_upload,
    too_large,
)
from hin.serve.service import CaptionService
from hin.serve.settings import MAX_BEAM_SIZE, ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
except ImportError as missing:
    raise MissingExtraError("`hin serve` needs FastAPI, uvicorn and python-multipart: "
                            f"{pip_install('serve')}") from missing

STATIC = Path(__file__).parent / "static"

CAPTIONS_OPENAPI = {
    "parameters": [{"name": name, "in": "query", "required": False, "description": meaning,
                    "schema": {"type": "boolean" if name == "explain" else "integer"}}
                   for name, meaning in OPTIONS.items()],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           **{name: {"type": "string", "description": meaning}
                              for name, meaning in OPTIONS.items()}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {str(status): {"description": meaning} for status, meaning in (
        (400, "not a picture, truncated, too many pixels, empty body or unknown option"),
        (413, "upload over --max-upload-mb"), (422, "an option out of range"),
        (501, "explain=true without hin.explain"),
        (503, "the checkpoint cannot caption pictures"))},
}


def create_app(settings: ServeSettings) -> FastAPI:
    service = CaptionService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="hin serve", summary="Caption pictures with a HIN checkpoint",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/healthz", summary="Liveness: ok, and whether pictures can be captioned")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "can_caption": service.unavailable is None}

    @app.get("/v1/info", summary="The model, the decoding defaults and limits, demo pictures")
    async def info() -> dict[str, Any]:
        return {"model": service.identity(), "can_caption": service.unavailable is None,
                "unavailable": service.unavailable, "can_explain": explain_available(),
                "decoding": settings.decoding.to_dict(), "max_beam_size": MAX_BEAM_SIZE,
                "max_upload_bytes": settings.max_upload_bytes,
                "demo_pictures": [path.name for path in service.demo_pictures]}

    @app.get("/v1/demo/{index}", summary="One of the checkpoint's test pictures, by index")
    async def demo_picture(index: int) -> FileResponse:
        if not 0 <= index < len(service.demo_pictures):
            raise RequestError(404, f"no demo picture {index}; there are "
                                    f"{len(service.demo_pictures)} (see /v1/info)")
        return FileResponse(service.demo_pictures[index])

    @app.post("/v1/captions", summary="Caption one picture", openapi_extra=CAPTIONS_OPENAPI)
    async def captions(request: Request) -> dict[str, Any]:
        """The picture as the body (raw bytes) or as the `file` of a multipart form; options
        as query parameters or form fields. Answers the captions best first with their
        summed log-probabilities, the decoding settings, the model's identity and, with
        explain=true, the best caption's attention maps and their geometry."""
        limit = settings.max_upload_bytes
        check_declared_size(request.headers.get("content-length"), limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(len(body), limit)
        upload = read_upload(bytes(body), request.headers.get("content-type", ""))
        options = parse_options(request.query_params, upload.fields, settings.decoding)
        picture, picture_format = await run_in_threadpool(decode_picture, upload.picture)
        service.keep(upload.picture, picture_format)
        answer = await asyncio.wrap_future(service.submit(picture, options))
        return {**answer, "decoding": options.decoding.to_dict(), "model": service.identity(),
                "picture": {"width": picture.width, "height": picture.height,
                            "format": picture_format}}

    return app
