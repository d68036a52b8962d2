"""Process entry helpers shared by the gateway, the generation server and the worker."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI

from service.request_id import RequestIdLogFilter

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s [%(request_id)s] %(message)s"  # "-" outside a request
_USER_PATH = re.compile(r"/users/[^/?\s]+")


class RedactUserIds(logging.Filter):
    """Access-log lines name the route, not the user: `/users/alice` is logged as `/users/{user_id}`
    (uvicorn passes the path as one of the record's args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _USER_PATH.sub("/users/{user_id}", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run an app with uvicorn (one process; scale out with more processes or pods)."""
    import uvicorn

    configure_logging()
    config = uvicorn.Config(app, host=host, port=port, log_level="info")  # configures uvicorn's loggers
    logging.getLogger("uvicorn.access").addFilter(RedactUserIds())
    uvicorn.Server(config).run()
