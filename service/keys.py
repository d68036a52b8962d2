"""The Redis layout, versioned, in one place.

| key                                | type   | holds                                                       |
|------------------------------------|--------|-------------------------------------------------------------|
| `{p}:events:{shard}`               | stream | accepted events; consumer group `encoders`                  |
| `{p}:hist:{user}`                  | zset   | the user's newest events: member = event key, score = time  |
| `{p}:evt:{user}`                   | hash   | event key -> packed event (JSON)                            |
| `{p}:state:{user}`                 | hash   | incremental encoder state: `kv` (fp16 bytes), `shape`,      |
|                                    |        | `keys` (event keys it covers, JSON), `model_version`;       |
|                                    |        | expires `state_ttl_s` after the last update when that is set |
| `{p}:emb:{user}`                   | hash   | `user_tokens` (fp16 bytes, L x Du), `shape`, `dtype`,       |
|                                    |        | `model_version`, `updated_at`, `last_event_id`, `n_events`, |
|                                    |        | `rev` (compare-and-set revision of the user's record)       |
| `{p}:seen:{user}`                  | hash   | `n_events`, `last_event_time`, `unknown_items`              |
| `{p}:items:{user}`                 | zset   | item ids the user had events on (exclude_seen), score = the |
|                                    |        | newest event time; the newest `items_keep` kept             |
| `{p}:dedup:{user}:{event_id}`      | string | SET NX EX: a client `event_id` already accepted for the user |
| `{p}:deadletter`                   | stream | entries and stored events a worker could not apply, with the |
|                                    |        | reason (capped at `DEADLETTER_MAXLEN`)                       |
| `{p}:forgotten:{user}`             | string | ms time of `DELETE /users/{user}`: older queued events of    |
|                                    |        | the user are dropped by the workers                          |
| `{p}:rate:{key}:{second}`          | string | requests of an API key in one second (rate limit)            |
| `{p}:worker:{name}`                | string | a worker's heartbeat (JSON), expires after `heartbeat_ttl_s` |
| `{p}:workers`                      | set    | names of the workers that ever heart-beat (readiness report) |

`{user}` and `{shard}` are Redis Cluster hash tags: every key of one user lives in one slot, so the
worker's MULTI/EXEC per user works on a cluster. Events of one user always go to the same shard
(crc32 of the user id), so they stay ordered within the shard's stream.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

LAYOUT_VERSION = 2  # 2: `items` is a capped sorted set
GROUP = "encoders"


@dataclass(frozen=True)
class Keys:
    """Key builder for one deployment (`prefix`) and shard count."""

    prefix: str = "ullm"
    num_shards: int = 4

    @property
    def base(self) -> str:
        return f"{self.prefix}:v{LAYOUT_VERSION}"

    def shard_of(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode("utf-8")) % self.num_shards

    def stream(self, shard: int) -> str:
        return f"{self.base}:events:{{{shard}}}"

    def streams(self) -> list[str]:
        return [self.stream(s) for s in range(self.num_shards)]

    def hist(self, user_id: str) -> str:
        return f"{self.base}:hist:{{{user_id}}}"

    def evt(self, user_id: str) -> str:
        return f"{self.base}:evt:{{{user_id}}}"

    def state(self, user_id: str) -> str:
        return f"{self.base}:state:{{{user_id}}}"

    def emb(self, user_id: str) -> str:
        return f"{self.base}:emb:{{{user_id}}}"

    def seen(self, user_id: str) -> str:
        return f"{self.base}:seen:{{{user_id}}}"

    def items(self, user_id: str) -> str:
        return f"{self.base}:items:{{{user_id}}}"

    def deadletter(self) -> str:
        return f"{self.base}:deadletter"

    def dedup(self, user_id: str, event_id: str) -> str:
        """Event ids are unique per user: another user's event cannot pre-claim this user's id."""
        return f"{self.base}:dedup:{{{user_id}}}:{event_id}"

    def forgotten(self, user_id: str) -> str:
        return f"{self.base}:forgotten:{{{user_id}}}"

    def user_keys(self, user_id: str) -> list[str]:
        """Every per-user key except the de-duplication ones (which need a SCAN), in the order of the
        worker's compare-and-set script."""
        return [self.hist(user_id), self.evt(user_id), self.emb(user_id), self.state(user_id),
                self.seen(user_id), self.items(user_id)]  # fmt: skip

    def worker(self, name: str) -> str:
        return f"{self.base}:worker:{name}"

    def workers(self) -> str:
        return f"{self.base}:workers"
