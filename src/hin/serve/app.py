"""The HTTP side: the page, `POST /v1/captions`, `GET /healthz`, `GET /v1/info`, the demo
pictures and local API docs. Every error is JSON `{"detail": "what is wrong"}` (one string)
with a 4xx/5xx status; the server goes on serving. Hosts and origins are checked first
(guard.py), then a request is admitted against the queue and the pixel budget
(admission.py); its body must arrive within --body-timeout.

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
from hin.serve.explanations import map_colours
from hin.serve.guard import HostAndOriginGuard
from hin.serve.inputs import (
    RequestError,
    check_declared_size,
    declared_pixels,
    parse_options,
    read_upload,
    too_large,
)
from hin.serve.schema import CaptionsAnswer, ErrorAnswer, Health, Info, captions_openapi
from hin.serve.service import CaptionService
from hin.serve.settings import MAX_BEAM_SIZE, ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as missing:
    raise MissingExtraError("`hin serve` needs FastAPI, uvicorn and python-multipart: "
                            f"{pip_install('serve')}") from missing

STATIC = Path(__file__).parent / "static"

ERROR = {"model": ErrorAnswer}
CAPTION_ERRORS: dict[int | str, dict[str, Any]] = {status: {**ERROR, "description": meaning} for status, meaning in (
    (400, "not a picture, truncated, too many pixels, empty body, a malformed, unknown or "
          "repeated option, a form with too many parts"),
    (403, "a Host this server does not answer to, or a POST from another site's page"),
    (408, "the body did not arrive within --body-timeout"),
    (413, "upload over --max-upload-mb"), (415, "a url-encoded form"),
    (422, "an option out of range"), (429, "--max-queue requests in progress (Retry-After)"),
    (503, "the pixel budget --max-pixels-in-flight is in use (Retry-After), or the "
          "checkpoint cannot caption pictures"))}


def create_app(settings: ServeSettings) -> FastAPI:
    service = CaptionService(settings)
    colours = map_colours()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="hin serve", summary="Caption pictures with a HIN checkpoint",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(HostAndOriginGuard, bound_host=settings.host,
                       allow_hosts=settings.allow_hosts, allow_origins=settings.allow_origins)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return JSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/healthz", summary="Liveness: ok, and whether pictures can be captioned")
    async def healthz() -> Health:
        return Health(status="ok", can_caption=service.unavailable is None)

    @app.get("/v1/info", summary="The model, what it was trained on, the decoding defaults "
                                 "and limits, demo pictures")
    async def info() -> Info:
        return Info(model=service.identity(), can_caption=service.unavailable is None,
                    unavailable=service.unavailable,
                    decoding=settings.decoding.to_dict(), max_beam_size=MAX_BEAM_SIZE,
                    max_upload_bytes=settings.max_upload_bytes,
                    max_pixels_in_flight=settings.max_pixels_in_flight,
                    max_queue=settings.max_queue,
                    demo_pictures=[path.name for path in service.demo_pictures],
                    map_colormap=colours)

    @app.get("/v1/demo/{index}", summary="One of the checkpoint's test pictures, by index",
             response_class=FileResponse, responses={
                 200: {"description": "the picture file as stored",
                       "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                 404: {**ERROR, "description": "no demo picture with this index"},
                 422: {**ERROR, "description": "the index is not a whole number"}})
    async def demo_picture(index: int) -> FileResponse:
        if not 0 <= index < len(service.demo_pictures):
            raise RequestError(404, f"no demo picture {index}; there are "
                                    f"{len(service.demo_pictures)} (see /v1/info)")
        return FileResponse(service.demo_pictures[index])

    @app.post("/v1/captions", summary="Caption one picture", openapi_extra=captions_openapi(),
              response_model=CaptionsAnswer, response_model_exclude_unset=True,
              responses=CAPTION_ERRORS)
    async def captions(request: Request) -> CaptionsAnswer:
        """The picture as the body (raw bytes) or as the `file` of a multipart form; options
        as query parameters or form fields. Answers the captions best first with their
        summed log-probabilities, the decoding settings, the model's identity, the upright
        picture's size and, with explain=true, the best caption's attention maps and their
        geometry in upright picture pixels."""
        limit = settings.max_upload_bytes
        check_declared_size(request.headers.get("content-length"), limit)
        body = await _read_body(request, limit, settings.body_timeout_s)
        upload = await run_in_threadpool(read_upload, body, request.headers.get("content-type", ""))
        options = parse_options(request.query_params.multi_items(), upload.fields,
                                settings.decoding)
        service.check()
        with service.admission.request():
            pixels = declared_pixels(upload.picture)
            service.admission.reserve(pixels)
            prepared = await asyncio.wrap_future(service.prepare(upload.picture, pixels))
            answer = await asyncio.wrap_future(service.submit(prepared, options))
        return CaptionsAnswer(**answer, decoding=options.decoding.to_dict(),
                              model=service.identity(),
                              picture={"width": prepared.width, "height": prepared.height,
                                       "format": prepared.format})

    return app


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused past `limit` bytes or when it takes longer than `timeout_s` (a
    client trickling bytes must not hold a request, or the server's shutdown, for long).
    asyncio.wait_for, not asyncio.timeout: Python 3.10 has only the former."""
    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(len(body), limit)
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:    # not the builtin TimeoutError before Python 3.11
        raise RequestError(408, f"the body did not arrive within {timeout_s:g} s "
                                "(--body-timeout)") from None
