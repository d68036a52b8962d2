"""Process entry helpers shared by the gateway, the generation server and the worker."""

from __future__ import annotations

import logging

from fastapi import FastAPI

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run an app with uvicorn (one process; scale out with more processes or pods)."""
    import uvicorn

    configure_logging()
    uvicorn.run(app, host=host, port=port, log_level="info")
