"""The HTTP side: the page, `POST /v1/captions`, `GET /healthz` (liveness), `GET /readyz`
(readiness), `GET /metrics`, `GET /v1/info`, the demo pictures and local API docs. Every
error is JSON `{"detail": "what is wrong"}` (one string) with a 4xx/5xx status; the server
goes on serving. Around the app: a trusted proxy's headers and the root path (proxy.py),
then the request id, security headers, access log and metrics (envelope.py), then hosts,
origins and CORS (guard.py). A caption request takes a queue slot before its body is read,
and the body's bytes from the body budget (admission.py); its body must arrive within
--body-timeout.

No request names a path: uploads are read from the body into memory (never written, unless
--keep-uploads), and demo pictures are addressed by their index in the server's own list.
FastAPI's stock /docs page loads Swagger UI from a CDN, so it is replaced by a small local
page that lists the endpoints from /openapi.json.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hin.config import MAX_SEED
from hin.errors import MissingExtraError, pip_install
from hin.serve.admission import Admission
from hin.serve.envelope import Envelope
from hin.serve.explanations import map_colours
from hin.serve.guard import HostAndOriginGuard
from hin.serve.inputs import (
    Options,
    RequestError,
    declared_pixels,
    declared_size,
    decoding_options,
    parse_options,
    read_upload,
    too_large,
)
from hin.serve.monitoring import CONTENT_TYPE, ServerMetrics
from hin.serve.proxy import ProxyHeaders
from hin.serve.schema import CaptionsAnswer, ErrorAnswer, Health, Info, Readiness, captions_openapi
from hin.serve.service import CaptionService
from hin.serve.settings import MAX_BEAM_SIZE, ServeSettings

try:
    from fastapi import FastAPI, Request
    from fastapi import Path as PathParameter
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as missing:
    raise MissingExtraError("`hin serve` needs FastAPI, uvicorn and python-multipart: "
                            f"{pip_install('serve')}") from missing

STATIC = Path(__file__).parent / "static"
SAMPLING_ONLY = tuple(name for name, setting in decoding_options().items()   # only sampling uses them
                      if setting.mode == "sampling" and name != "sample")

ERROR = {"model": ErrorAnswer}
CAPTION_ERRORS: dict[int | str, dict[str, Any]] = {status: {**ERROR, "description": meaning} for status, meaning in (
    (400, "not a picture, truncated, too many pixels, empty body, a malformed, unknown or "
          "repeated option, a form with too many parts"),
    (403, "a Host this server does not answer to, or a POST from another site's page"),
    (408, "the body did not arrive within --body-timeout"),
    (413, "upload over --max-upload-mb"),
    (415, "a url-encoded form, or a body with a Content-Encoding"),
    (422, "an option out of range, a sampling option without sample, or a picture too long "
          "or tall for the extractors' resize"),
    (429, "--max-queue requests in progress (Retry-After)"),
    (503, "the pixel budget --max-pixels-in-flight or the body budget --max-body-mb-in-flight "
          "is in use (Retry-After), or the checkpoint cannot caption pictures"))}


class ServerReadiness:
    """Ready: the checkpoint can caption pictures, the batching worker runs and the server is
    not shutting down (a proxy then stops sending it requests)."""

    def __init__(self, service: CaptionService) -> None:
        self.service, self.draining = service, False

    def drain(self) -> None:
        self.draining = True

    def problem(self) -> str | None:
        if self.draining:
            return "the server is shutting down"
        if self.service.unavailable:
            return f"this server cannot caption pictures: {self.service.unavailable}"
        if not self.service.batcher.running():
            return "the batching worker has stopped"
        return None


def create_app(settings: ServeSettings) -> FastAPI:
    service = CaptionService(settings)
    colours = map_colours()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="hin serve", summary="Caption pictures with a HIN checkpoint",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = ServerMetrics(service.admission)
    service.batcher.on_batch = metrics.batch_sizes.observe
    readiness = ServerReadiness(service)
    app.state.service, app.state.metrics, app.state.readiness = service, metrics, readiness
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(HostAndOriginGuard, bound_host=settings.host,   # innermost
                       allow_hosts=settings.allow_hosts, allow_origins=settings.allow_origins)
    app.add_middleware(Envelope, metrics=metrics)
    app.add_middleware(ProxyHeaders, root_path=settings.root_path,   # outermost
                       forwarded_allow_ips=settings.forwarded_allow_ips)

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

    @app.get("/healthz", summary="Liveness: the server answers (and whether pictures can be "
                                 "captioned)")
    @app.head("/healthz", include_in_schema=False)
    async def healthz() -> Health:
        return Health(status="ok", can_caption=service.unavailable is None)

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
             summary="Readiness: 200 when captions can be asked for now, else 503 with the "
                     "reason")
    @app.head("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problem = readiness.problem()
        return JSONResponse({"ready": problem is None, "reason": problem},
                            status_code=200 if problem is None else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/info", summary="The model, what it was trained on, the decoding defaults "
                                 "and limits, demo pictures")
    @app.head("/v1/info", include_in_schema=False)
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
                 404: {**ERROR, "description": "no demo picture with this index"}})
    async def demo_picture(index: str = PathParameter(
            description="0, 1, ... in ASCII digits, as /v1/info lists them")) -> FileResponse:
        count = len(service.demo_pictures)
        if not (index.isascii() and index.isdigit() and len(index) < 10 and int(index) < count):
            raise RequestError(404, f"no demo picture {index[:20]}; they are numbered 0 to "
                                    f"{count - 1} in digits (see /v1/info)" if count else
                                    "this server has no demo pictures")
        return FileResponse(service.demo_pictures[int(index)])

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
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RequestError(415, f"Content-Encoding {encoding[:40]!r} is not accepted: send "
                                    "the picture's own bytes, unencoded (pictures are "
                                    "compressed already)")
        declared = declared_size(request.headers.get("content-length"), limit)
        service.check()
        with service.admission.request(), _BodyBudget(service.admission) as budget:
            body = await _read_body(request, declared, limit, settings.body_timeout_s, budget)
            upload = await run_in_threadpool(read_upload, body,
                                             request.headers.get("content-type", ""))
            query = request.query_params.multi_items()
            options = _with_seed(_sampling_checked(
                parse_options(query, upload.fields, settings.decoding),
                [name for name, _ in query] + list(upload.fields)))
            pixels = declared_pixels(upload.picture)
            service.admission.reserve(pixels)
            prepared = await asyncio.wrap_future(service.prepare(upload.picture, pixels))
            answer = await asyncio.wrap_future(service.submit(prepared, options))
        return CaptionsAnswer(**answer, decoding=options.decoding.to_dict(),
                              model=service.identity(),
                              picture={"width": prepared.width, "height": prepared.height,
                                       "format": prepared.format, "frames": prepared.frames})

    return app


def _sampling_checked(options: Options, given: list[str]) -> Options:
    """Refuse sampling's options on a request that does not sample: they would be echoed
    back as if they had been used."""
    unused = [name for name in SAMPLING_ONLY if name in given]
    if unused and not options.decoding.sample:
        raise RequestError(422, f"{', '.join(unused)} apply only when sampling: add "
                                "sample=true, or leave them out")
    return options


def _with_seed(options: Options) -> Options:
    """Unseeded sampling gets a seed drawn here, so the answer names the seed that makes
    its captions again."""
    if not options.decoding.sample or options.decoding.seed is not None:
        return options
    return dataclasses.replace(options, decoding=dataclasses.replace(
        options.decoding, seed=secrets.randbelow(MAX_SEED)))


class _BodyBudget:
    """The body bytes a request holds in the admission's budget, given back when it ends."""

    def __init__(self, admission: Admission) -> None:
        self.admission, self.held = admission, 0

    def hold(self, size: int) -> None:
        if size > self.held:
            self.admission.reserve_body(size - self.held)
            self.held = size

    def __enter__(self) -> _BodyBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.admission.release_body(self.held)
        self.held = 0


async def _read_body(request: Request, declared: int | None, limit: int, timeout_s: float,
                     budget: _BodyBudget) -> bytes:
    """The body, refused past `limit` bytes, past the body budget (a `declared` length is held
    whole before reading) or when it takes longer than `timeout_s` (a client trickling bytes
    must not hold a request, or the server's shutdown, for long). asyncio.wait_for, not
    asyncio.timeout: Python 3.10 has only the former."""
    if declared is not None:
        budget.hold(declared)

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(len(body), limit)
            budget.hold(len(body))
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:    # not the builtin TimeoutError before Python 3.11
        raise RequestError(408, f"the body did not arrive within {timeout_s:g} s "
                                "(--body-timeout)") from None
