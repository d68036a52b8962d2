"""Process entry helpers shared by the gateway, the generation server and the worker."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from service.request_id import RequestIdLogFilter

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s [%(request_id)s] %(message)s"  # "-" outside a request


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run an app with uvicorn (one process; scale out with more processes or pods)."""
    import uvicorn

    configure_logging()
    uvicorn.run(app, host=host, port=port, log_level="info")
