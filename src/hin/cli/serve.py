"""`hin serve`: the page and HTTP API, behind one listening socket."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from hin.cli.options import (
    add_checkpoint_inputs,
    add_checkpoint_option,
    add_decoding_options,
    add_device_option,
    decoding,
    extractor_weights,
    one_checkpoint,
)
from hin.errors import UsageError
from hin.serve.settings import RANGES, SERVE_THREADS, ServeSettings

# The server's limits: ServeSettings field -> (metavar, help). Each flag's name is the one its
# range names (hin.serve.settings.RANGES), its type and default are read from the field, so a
# default lives in ServeSettings alone.
LIMIT_FLAGS: dict[str, tuple[str | None, str]] = {
    "max_batch": (None, "most concurrent requests captioned in one model call"),
    "max_wait_ms": (None, "longest a request waits for others to batch with"),
    "max_upload_mb": (None, "larger uploads are refused with 413"),
    "max_body_mb_in_flight": ("MB",
                              "most MiB of request bodies held at once (each counted whole "
                              "from its Content-Length before it is read); beyond it 503 with "
                              "Retry-After"),
    "max_pixels_in_flight": ("PIXELS",
                             "most pixels of pictures decoded at once (memory follows pixels, "
                             "about 13 bytes each at the peak); beyond it 503 with Retry-After"),
    "max_queue": (None,
                  "most requests in progress at once; beyond it 429 with Retry-After"),
    "max_connections": (None,
                        "most connections open at once; one more is answered 503 and closed"),
    "decode_workers": (None,
                       "threads that decode and prepare pictures, off the batching thread"),
    "body_timeout_s": ("SECONDS",
                       "a request body that takes longer to arrive is refused with 408"),
    "header_timeout_s": ("SECONDS",
                         "a connection whose request head takes longer to arrive (from its "
                         "opening or its previous answer) is closed"),
    "idle_timeout_s": ("SECONDS",
                       "a kept-alive connection idle this long after an answer is closed"),
    "shutdown_timeout_s": ("SECONDS",
                           "on SIGTERM, SIGHUP or Ctrl-C, requests still running after this "
                           "are cut off (answered 503)"),
}


def _serve(args: argparse.Namespace) -> int:
    from hin.serve import create_app

    try:
        from hin.serve.server import check_open_files, serve
    except ImportError as missing:
        from hin.errors import MissingExtraError, pip_install

        raise MissingExtraError(f"`hin serve` needs uvicorn: {pip_install('serve')}") from missing
    settings = ServeSettings(
        one_checkpoint(args, "serve one per server")[0], decoding=decoding(args), device=args.device,
        keep_uploads=args.keep_uploads, host=args.host, port=args.port,
        allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin),
        forwarded_allow_ips=tuple(args.forwarded_allow_ips), root_path=args.root_path,
        vocab=args.vocab, extractor_weights=tuple(extractor_weights(args).items()),
        **{name: getattr(args, name) for name in LIMIT_FLAGS})
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    check_open_files(settings.max_connections)
    listener = _listen(args.host, args.port)      # before the model loads: a taken port fails fast
    import torch

    torch.set_num_threads(args.threads)
    app = create_app(settings)
    if app.state.service.unavailable:
        print(f"hin serve: warning: pictures cannot be captioned: {app.state.service.unavailable}",
              file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hin serve: warning: listening on {args.host}: anyone who can reach this machine "
              "can use the model (no authentication, no TLS)", file=sys.stderr)
    return serve(app, settings, listener, args.log_level)


def _listen(host: str, port: int):
    """The server's listening socket, or one line saying why it cannot be had."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} is not an address of this machine ({error})") from None
    except OSError as error:
        raise UsageError(f"cannot listen on {host} port {port}: {error.strerror}; is another "
                         "server using it? Choose another with --port") from None
    return listener


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="a page and an HTTP API that caption pictures "
                                          "(batched; binds 127.0.0.1 unless told)")
    add_checkpoint_option(p, required=True, help="hin checkpoint (.pt)")
    add_checkpoint_inputs(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; another than loopback exposes the model to the "
                        "network, unauthenticated")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests naming this Host (e.g. the name a proxy uses; "
                        "'*' for any); by default only the bound address and localhost names")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from this origin (e.g. https://example.org; '*' for any) "
                        "POST pictures; by default only the server's own page may")
    p.add_argument("--forwarded-allow-ips", action="append", default=[], metavar="IPS",
                   help="believe X-Forwarded-Proto/Host/For only from these proxy addresses or "
                        "networks (comma-separated or repeated; '*' for any); by default from "
                        "none")
    p.add_argument("--root-path", default="", metavar="PATH",
                   help="the path prefix a reverse proxy serves this server under (e.g. /hin)")
    defaults = {field.name: field.default for field in dataclasses.fields(ServeSettings)}
    for name, (metavar, help_text) in LIMIT_FLAGS.items():
        p.add_argument(RANGES[name][0], dest=name, type=type(defaults[name]), default=defaults[name],
                       metavar=metavar, help=help_text)
    p.add_argument("--keep-uploads", metavar="DIR",
                   help="write every decoded upload to DIR (named by its sha256); by default "
                        "uploads never touch the disk")
    add_device_option(p)
    p.add_argument("--threads", type=int, default=SERVE_THREADS,
                   help="CPU threads for inference (torch.set_num_threads; the default is the "
                        "fastest measured: see docs/serving.md)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                           "info", "debug"],
                   help="how much the web server (uvicorn) logs: each request at info")
    add_decoding_options(p, num_captions=True)
    p.set_defaults(handler=_serve)


