"""Incremental detokenization of a decode for streaming (the PyTorch engine's rows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.jobs import GenerateResult


class Detokenizer:
    """The text of one decode as its tokens come: `add` passes each new printable piece to `on_text`
    (held back while the text ends inside a multi-byte character). Incremental: each token decodes
    only the tokens since the last piece sent and those of that piece (for the tokenizer's spacing),
    not the whole output again (as vLLM's incremental detokenizer does)."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.sent = ""
        self._prefix = 0  # tokens[_prefix:_read] decode to the end of what was sent
        self._read = 0

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def add(self, token: int | None) -> None:
        if token is None:
            return
        self.tokens.append(token)
        if self.on_text is None:
            return
        before = self._decode(self.tokens[self._prefix : self._read])
        text = self._decode(self.tokens[self._prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            piece = text[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            self.sent += piece
            self.on_text(piece)

    def result(self, prompt_tokens: int) -> GenerateResult:
        """The whole text (what `on_text` has not had yet is passed to it now)."""
        text = self._decode(self.tokens)
        if self.on_text is not None and len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_text(text[len(self.sent) :])
            self.sent = text
        return GenerateResult(text.strip(), prompt_tokens, len(self.tokens))
