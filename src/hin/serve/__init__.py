"""`hin serve`: a page and an HTTP API that caption (and explain) pictures with a checkpoint.

    from hin.serve import ServeSettings, create_app
    app = create_app(ServeSettings("runs/demo/scst/best.pt"))     # an ASGI app (FastAPI)

FastAPI, uvicorn, python-multipart and prometheus_client come with the `serve` extra (pip install 'hin-caption[serve]').
"""

from hin.serve.settings import ServeSettings


def create_app(settings: ServeSettings):
    """The FastAPI app for `settings` (loads the checkpoint now); see hin.serve.app."""
    from hin.serve.app import create_app as create

    return create(settings)


__all__ = ["ServeSettings", "create_app"]
