"""Load test of the USER-LLM gateway: recommend (x3), generate (x1) and event ingestion (x1).

Each simulated user owns one user id (random in `USER_ID_RANGE`), posts a batch of rating events for it
on start, waits (bounded) until the encoder worker has written its user tokens, then loops over the
tasks. Every response body is checked, so a 200 with a wrong body counts as a failure.

Run it through `loadtests/run.sh` (headless, bounded, CSV + summary), or by hand:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 --run-time 60s

Only loopback targets are accepted (127.0.0.0/8, localhost, ::1): a load test sends traffic to servers
on this machine only.

Based on: locust `examples/fast_http_locust.py` and `examples/rest.py` (`FastHttpUser.rest` + body
checks with `resp.failure`).
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import os
import random
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from locust import FastHttpUser, between, events, task
from locust.exception import StopUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

# --- knobs ---
DEFAULT_HOST = "http://127.0.0.1:8000"
USER_ID_RANGE = (900_000, 909_999)  # load-test users, far from the MovieLens ids (1..610)
START_EVENTS = 30  # events posted by on_start: enough history for a personalized embedding
TASK_EVENTS = 3  # events per POST /events task
RECOMMEND_K = 10
GENERATE_MAX_NEW_TOKENS = 8
WARMUP_TIMEOUT_S = 20.0  # how long on_start waits for the user's embedding before starting anyway
WARMUP_POLL_S = 0.5
MOVIES_CSV = Path(__file__).resolve().parents[1] / "data" / "ml-latest-small" / "movies.csv"
FALLBACK_ITEM_IDS = [str(i) for i in range(1, 1001)]

log = logging.getLogger(__name__)


def _load_item_ids() -> list[str]:
    """Real catalogue ids from the vendored MovieLens file, so that events are not `unknown_items`."""
    try:
        with MOVIES_CSV.open(newline="", encoding="utf-8") as f:
            ids = [row["movieId"] for row in csv.DictReader(f)]
    except (OSError, KeyError):
        return FALLBACK_ITEM_IDS
    return ids or FALLBACK_ITEM_IDS


ITEM_IDS = _load_item_ids()


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs whose host is on this machine: 127.0.0.0/8, ::1 or localhost."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_environment = None  # set by the init hook, read by the quit hook


@events.init.add_listener
def _only_loopback(environment, **_kwargs) -> None:
    """Refuse any target that is not on this machine, before a single request is sent."""
    global _environment
    _environment = environment
    host = environment.host or DEFAULT_HOST
    if not is_loopback_url(host):
        raise SystemExit(f"refusing to load-test {host!r}: only loopback targets (127.0.0.1) are allowed")


@events.quit.add_listener
def _write_final_csv(**_kwargs) -> None:
    """Write `<csv prefix>_stats_final.csv` / `_failures_final.csv` from the final stats.

    locust's own `--csv` files are rewritten every second from a background greenlet, so they miss the
    last second and the stop period; these are written once the users have stopped, in the same
    format, and match the summary locust prints.
    """
    prefix = getattr(getattr(_environment, "parsed_options", None), "csv_prefix", None)
    if _environment is None or not prefix:
        return
    stats_csv = StatsCSV(_environment, PERCENTILES_TO_REPORT)
    with open(f"{prefix}_stats_final.csv", "w", newline="", encoding="utf-8") as f:
        stats_csv.requests_csv(csv.writer(f))
    with open(f"{prefix}_failures_final.csv", "w", newline="", encoding="utf-8") as f:
        stats_csv.failures_csv(csv.writer(f))


def _json_body(resp, ok: tuple[int, ...] = (200,)) -> dict | None:
    """The parsed body of a successful response, or None after marking the request failed."""
    if resp.status_code in ok and isinstance(resp.js, dict):
        return resp.js
    if resp.status_code in ok:
        resp.failure(f"status {resp.status_code} without a JSON object body: {(resp.text or '')[:200]}")
    else:
        resp.failure(f"status {resp.status_code}: {(resp.text or '')[:200]}")
    return None


def _events(user_id: str, n: int) -> list[dict]:
    now = time.time()
    return [
        {
            "user_id": user_id,
            "item_id": random.choice(ITEM_IDS),
            "timestamp": now - (n - i),
            "event_type": "rating",
            "rating": float(random.randint(1, 10)) / 2,
            "event_id": uuid.uuid4().hex,
        }
        for i in range(n)
    ]


class GatewayUser(FastHttpUser):
    host = DEFAULT_HOST
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        if not is_loopback_url(self.host):  # second guard, in case the init hook was bypassed
            raise StopUser(f"refusing to load-test {self.host!r}")
        self.user_id = str(random.randint(*USER_ID_RANGE))
        if key := os.environ.get("USERLLM_API_KEY"):  # a key with ingest + read when auth is on
            self.client.headers["Authorization"] = f"Bearer {key}"
        self._post_events(START_EVENTS, name="/events (on_start)")
        self._wait_for_embedding()

    # --- helpers ---

    def _post_events(self, n: int, *, name: str) -> None:
        body = {"events": _events(self.user_id, n)}
        with self.rest("POST", "/events", json=body, name=name) as resp:
            js = _json_body(resp, ok=(200, 202))
            if js is not None and js.get("accepted", 0) + js.get("duplicates", 0) != n:
                resp.failure(f"expected {n} events accepted, got {js}")

    def _wait_for_embedding(self) -> None:
        """Poll GET /users/{id} until the worker has written this user's tokens (bounded)."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.rest("GET", f"/users/{self.user_id}", name="/users/{id} (warm-up)") as resp:
                if resp.status_code == 404:
                    resp.success()  # the worker has not seen the user yet: expected while warming up
                else:
                    js = _json_body(resp)
                    if js is not None and js.get("embedding_model_version"):
                        return
            time.sleep(WARMUP_POLL_S)
        log.warning("user %s: no embedding after %.0f s, starting anyway", self.user_id, WARMUP_TIMEOUT_S)

    # --- tasks ---

    @task(3)
    def recommend(self) -> None:
        body = {"user_id": self.user_id, "k": RECOMMEND_K}
        with self.rest("POST", "/recommend", json=body, name="/recommend") as resp:
            js = _json_body(resp)
            if js is None:
                return
            items = js.get("items")
            if not isinstance(items, list) or not items:
                resp.failure(f"no items in {resp.text[:200]}")
            elif len(items) != RECOMMEND_K:
                resp.failure(f"expected k={RECOMMEND_K} items, got {len(items)}")
            elif any(not isinstance(it, dict) or not it.get("item_id") for it in items):
                resp.failure(f"item without item_id in {resp.text[:200]}")

    @task(1)
    def generate(self) -> None:
        body = {
            "user_id": self.user_id,
            "task": "genre",
            "max_new_tokens": GENERATE_MAX_NEW_TOKENS,
            "temperature": 0.0,
        }
        with self.rest("POST", "/generate", json=body, name="/generate") as resp:
            js = _json_body(resp)
            if js is None:
                return
            text = js.get("text")
            if not isinstance(text, str) or not text.strip():
                resp.failure(f"no generated text in {resp.text[:200]}")

    @task(1)
    def post_events(self) -> None:
        self._post_events(TASK_EVENTS, name="/events")
