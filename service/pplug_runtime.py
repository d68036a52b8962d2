"""PPlug's user side online: a user's history as sentence embeddings, cached like user tokens.

PPlug (Liu et al., "LLMs + Persona-Plug = Personalized LLMs", ACL 2025) embeds each history item h_i
and the request's input x with a sentence encoder (all-MiniLM-L6-v2) and aggregates them per request:
P = sum_i softmax_i(x . h_i) h_i (models/pplug.PPlugAggregator). Online, in mode "pplug":

- the worker (and the generation server's recompute path) writes, where the other modes keep their
  16 user tokens, the embeddings of the user's newest `window` history items, oldest first: an
  (N, Dt) float16 array, N <= window, with the same checksum and `model_version` (versioned like the
  user tokens: a roll-out re-embeds). The item text is `models.pplug.item_text` (title and
  categories), what training embeds (training/tasks.py);
- the generation server aggregates them per request against the embedding of the request's input
  text (the task's instruction for scoring, "Write this user's review." for reviews, the message for
  chat), which is what makes PPlug input-aware: the history is embedded once, the query per request.

Each item's text is embedded once per process and kept by item id (the catalogue of one
model_version does not change), so an update gathers cached vectors instead of running the sentence
encoder over the history. There is no encoder state: every update is a "full" one over the newest
`window` events, at the cost of a gather. `load_user_runtime` picks this runtime or the user tower's
(service/encoding.py) by the checkpoint's mode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.pplug import SentenceEncoder, item_text
from service.codec import FeatureCodec
from service.encoding import Encoded, UserTowerRuntime
from service.user_store import StoredEvent

MAX_CACHED = 200_000  # item and query vectors kept per process (768 bytes each in float16)


class PPlugRuntime:
    """History -> (N, Dt) item-text embeddings (the cached "user tokens" of mode pplug); input text ->
    its query embedding. Same interface as `UserTowerRuntime` for the worker and the engine."""

    slide = 0  # no encoder state to slide: every update covers the newest `window` events

    def __init__(
        self, sentence: SentenceEncoder, codec: FeatureCodec, model_version: str, window: int,
        device: str = "cpu",
    ) -> None:  # fmt: skip
        self.sentence = sentence.eval().to(device)
        self.codec, self.model_version, self.window, self.device = codec, model_version, window, device
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()  # item id -> (Dt,) float16
        self._queries: OrderedDict[str, torch.Tensor] = OrderedDict()  # text -> (Dt,) float32

    @property
    def dim(self) -> int:
        """Dt, the sentence-embedding width."""
        return self.sentence.dim

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether cached tokens of `shape` are this runtime's: (N, Dt) with 1 <= N <= window."""
        return len(shape) == 2 and shape[1] == self.dim and 1 <= shape[0] <= self.window

    def _categories(self, item_id: str) -> list[str]:
        return [str(c) for c in (self.codec.catalogue.get(item_id) or {}).get("categories") or []]

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.sentence.encode(texts).float().cpu()  # (n, Dt), unit norm

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, Dt) float16 embeddings of the items' texts, embedding the ones not cached yet."""
        missing = [i for i in dict.fromkeys(item_ids) if i not in self._items]
        if missing:
            texts = [item_text(self.codec.title(i), self._categories(i)) for i in missing]
            for item, vector in zip(missing, self._embed(texts).numpy().astype(np.float16), strict=True):
                self._items[item] = vector
        for item in item_ids:
            self._items.move_to_end(item)
        while len(self._items) > MAX_CACHED:
            self._items.popitem(last=False)
        if not item_ids:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.stack([self._items[i] for i in item_ids])

    def queries(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, Dt) float32 embeddings of the requests' input texts (cached per text)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._queries]
        if missing:
            for text, vector in zip(missing, self._embed(missing), strict=True):
                self._queries[text] = vector
        while len(self._queries) > MAX_CACHED:
            self._queries.popitem(last=False)
        return torch.stack([self._queries[t] for t in texts])

    def span(self, n_events: int) -> int:
        return min(n_events, self.window)

    def encode_full(self, histories: Sequence[Sequence[StoredEvent]]) -> list[Encoded]:
        """The newest `window` events of each (time-ordered) history -> their item embeddings."""
        out = []
        for history in histories:
            newest = list(history)[len(history) - self.span(len(history)) :]
            vectors = self.item_vectors([e.item_id for e in newest])
            out.append(Encoded(vectors, None, [], len(newest), "full"))
        return out

    def encode_incremental(self, *args: object, **kwargs: object) -> list[Encoded]:
        raise RuntimeError("PPlug keeps no encoder state: every update is a full one (can_extend is False)")

    def can_extend(self, *args: object, **kwargs: object) -> bool:
        return False

    def state_of(self, raw: dict[bytes, bytes] | None) -> None:
        return None


def load_user_runtime(
    directory: str | Path, device: str = "cpu", *, slide: int = 0
) -> UserTowerRuntime | PPlugRuntime:
    """The user-side runtime of a USER-LLM checkpoint: PPlug's history embeddings in mode "pplug",
    else the user tower (encoder + Perceiver)."""
    ck = load_checkpoint(directory)
    if ck.config["llm"]["mode"] == "pplug":
        codec = FeatureCodec.from_extras(ck.extras["vocab"], ck.extras["catalogue"])
        window = int(ck.config["tower"]["encoder"]["window"])
        return PPlugRuntime(SentenceEncoder(), codec, ck.model_version, window, device)
    return UserTowerRuntime.from_checkpoint(directory, device, slide=slide)
