"""Language tasks of multi-task USER-LLM fine-tuning: text targets read through the user tokens, and a
KL term that keeps generic language equal to the bare backbone's.

The scoring tasks (next item, favourite genre) train heads on one hidden state; nothing in them looks at
the text the LM head then writes through the same cross-attention blocks. These tasks do, through the
same user tokens and blocks (USER-LLM, arXiv 2402.13598, Sec. 4 trains review generation with the LM
loss; the KL term is the usual guard against drift from the base LM, as in RLHF's KL penalty,
Ouyang et al. 2022, here on generic instruction text):

- "taste": "Describe my taste in movies." -> "You mostly watch Drama, Comedy and Romance movies." (the
  history's three most frequent categories, most frequent first);
- "suggest": "Suggest a movie for me tonight and say why.\nRecommended movie: Heat (1995). Genres: Action,
  Crime, Thriller." -> "Heat (1995). It is an Action, Crime and Thriller movie, and you often watch Action
  and Thriller movies." (the user's real next item, given in the instruction as the service gives the
  item its next-item head ranks first, models/prompts.py; the reason from its categories shared with the
  user's three most frequent categories, which only the user tokens tell);
- "generic": KL(bare backbone || model with a user's tokens) over the response tokens of the generic
  instruction text (training/generic_text.py), against the bare backbone's top-K next-token
  distribution (K + 1 buckets: the top K tokens and the rest), computed once before training.

Instructions rotate over several phrasings (first and third person, one per batch) so chat requests that
ask the same thing are answered the same way. LM losses count the target tokens only (not the
per-example part of a grounded instruction); in a data-parallel
step the means are over the global batch's tokens (training/distributed.py `shard_mean`).

Shapes: B examples, S tokens, K top tokens, Dl LLM width, V vocabulary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.generation import left_pad
from models.lower_layers import forward_from_lower, lower_states, lower_states_after, prefix_kv
from models.prompts import display_title, instruction, prompt_ids
from models.userllm import UserContext
from training.data import Event, Example
from training.distributed import shard_mean
from training.generic_text import GenericText
from training.tasks import TaskRunner

__all__ = [
    "SUGGEST_PROMPTS",
    "TASTE_PROMPTS",
    "TEXT_TASKS",
    "TOP_K",
    "TextTasks",
    "bucket_kl",
    "suggest_target",
    "taste_target",
    "top_categories",
]

TEXT_TASKS = ("taste", "suggest", "generic")
TOP_K = 64  # teacher tokens kept per position for the generic KL
TASTE_PROMPTS = (  # (instruction, second person?)
    ("Describe my taste in {noun}s.", True),
    ("What kind of {noun}s do I like?", True),
    ("Describe this user's taste in {noun}s.", False),
)
SUGGEST_PROMPTS = (
    ("Suggest a {noun} for me tonight and say why.", True),
    ("Which {noun} should I pick next? Say why.", True),
    ("Suggest a {noun} for this user and say why.", False),
)


# --- targets ---


def top_categories(history: Sequence[Event], n: int = 3) -> list[str]:
    """The history's most frequent categories, most frequent first (ties: the most recent first)."""
    counts = Counter(c for e in history for c in e.categories)
    last = {c: i for i, e in enumerate(history) for c in e.categories}
    return sorted(counts, key=lambda c: (-counts[c], -last[c]))[:n]


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _verb(noun: str, *, you: bool) -> str:
    """ "you ... watch" / "this user ... watches" (movies), "choose" / "chooses" otherwise."""
    if noun == "movie":
        return "watch" if you else "watches"
    return "choose" if you else "chooses"


def taste_target(history: Sequence[Event], noun: str, *, you: bool) -> str | None:
    """The taste target, e.g. "You mostly watch A, B and C movies." (None without categorised events)."""
    top = top_categories(history)
    if not top:
        return None
    who = "You" if you else "This user"
    return f"{who} mostly {_verb(noun, you=you)} {_join(top)} {noun}s."


def suggest_target(
    history: Sequence[Event], title: str, categories: Sequence[str], noun: str, *, you: bool
) -> str:
    """The suggestion target, e.g. "Title. It is an A and B movie, and you often watch A movies." (the
    reason from the item's categories shared with the user's favourites)."""
    text = f"{title}."
    if categories:
        kinds = _join(list(categories))
        text += f" It is {_article(kinds)} {kinds} {noun}"
        shared = [c for c in top_categories(history) if c in categories]
        if shared:
            who = "you" if you else "this user"
            text += f", and {who} often {_verb(noun, you=you)} {_join(shared)} {noun}s."
        else:
            text += ", something new to try."
    return text


# --- losses ---


@dataclass
class TextTasks:
    """The language tasks of one TaskRunner (its model, tokenizer, corpus and user contexts)."""

    runner: TaskRunner
    generic: Sequence[GenericText] = ()  # training part of the generic text
    max_target_tokens: int = 40
    _teacher: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # per generic text: (R, K) ids, logp
    _lower: dict[GenericText, Tensor] = field(default_factory=dict)  # text -> (1, S_i, Dl) lower states
    _prefixes: dict[tuple[int, ...], Any] = field(default_factory=dict)  # prompt -> prefix_kv(prompt)
    teacher_mass: float = 0.0  # mean probability mass of the teacher's top K (the KL sees the rest as one)

    def pool(self, examples: Sequence[Example], task: str) -> list[Example]:
        """The training examples a task can use (taste: a categorised history; suggest: a titled target)."""
        catalogue = self.runner.corpus.catalogue
        if task == "taste":
            return [ex for ex in examples if top_categories(ex.history)]
        if task == "suggest":
            return [ex for ex in examples if (catalogue.get(ex.target.item) or {}).get("title")]
        return list(examples)

    def pair(self, ex: Example, task: str, index: int) -> tuple[str, str]:
        """(instruction, target text) of one example; `index` picks the phrasing."""
        noun = self.runner.noun
        template, you = (TASTE_PROMPTS if task == "taste" else SUGGEST_PROMPTS)[index % 3]
        question = template.format(noun=noun)
        if task == "taste":
            target = taste_target(ex.history, noun, you=you)
        else:
            entry = self.runner.corpus.catalogue.get(ex.target.item) or {}
            title, categories = entry.get("title") or ex.target.item, entry.get("categories") or []
            target = suggest_target(ex.history, display_title(title), categories, noun, you=you)
            question = instruction("suggest", noun=noun, category=self.runner.category_noun, prompt=question,
                                   title=title, categories=categories)  # fmt: skip
        if target is None:
            raise ValueError(f"task {task}: example of user {ex.user} has no target")
        return question, target

    def loss(
        self, examples: Sequence[Example], task: str, step: int = 0, *, first: int = 0, batch: int = 0
    ) -> Tensor:
        """One task's loss on a batch; `step` picks the instruction phrasing (one per batch) and the
        generic texts. `examples` may be the part of a global batch of `batch` examples (0: the whole
        batch) from position `first` (training/distributed.py `shard`)."""
        if task == "generic":
            return self.generic_kl(examples, step, first=first, batch=batch)
        pairs = [self.pair(ex, task, step) for ex in examples]
        return self.lm_loss(examples, [i for i, _ in pairs], [target for _, target in pairs])

    def lm_loss(
        self, examples: Sequence[Example], instructions: Sequence[str], targets: Sequence[str]
    ) -> Tensor:
        """Mean cross-entropy of the target tokens (+ EOS) after each example's instruction, read with
        each user.

        The batch is [shared prompt | rest of the prompt, target, right-padded]: the shared prompt is the
        prompts' common prefix (the whole prompt when the instructions are the same); with frozen lower
        layers its lower states and keys/values are computed once (models/lower_layers.py `prefix_kv`) and
        only the rest runs through the lower layers. The loss counts the target tokens only.
        """
        tok = self.runner.tokenizer
        device = self.runner.device
        prompts = [prompt_ids(tok, i) for i in instructions]
        p = _common_prefix(prompts)
        if p == 0:
            raise ValueError("the instructions of a batch share no first token (the chat template's)")
        prompt = prompts[0][:p]
        rows, starts = [], []  # per example: rest of its prompt, target, EOS; where the target starts
        for rest, t in zip((q[p:] for q in prompts), targets, strict=True):
            target = tok(t, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
            rows.append([*rest, *target, tok.eos_token_id])
            starts.append(len(rest))
        width = max(len(r) for r in rows)
        target_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        target_mask = torch.zeros(len(rows), width, dtype=torch.bool)  # attended: rest and target
        loss_mask = torch.zeros(len(rows), width, dtype=torch.bool)  # scored: target and EOS
        for i, (r, start) in enumerate(zip(rows, starts, strict=True)):
            target_ids[i, : len(r)] = torch.tensor(r)
            target_mask[i, : len(r)] = True
            loss_mask[i, start : len(r)] = True
        target_ids, target_mask, loss_mask = (t.to(device) for t in (target_ids, target_mask, loss_mask))
        mask = torch.cat([target_mask.new_ones(len(rows), p), target_mask], dim=1)  # (B, P + T)
        context = self.runner.context(examples)
        llm = self.runner.model.llm
        if self.runner.reuse_lower:
            prefix, kv = self._prefix(prompt)
            lower = torch.cat(
                [prefix.expand(len(rows), -1, -1), lower_states_after(llm, kv, target_ids, target_mask)],
                dim=1,
            )  # (B, P + T, Dl)
            hidden = forward_from_lower(llm, lower, mask, context)
        else:
            ids = torch.cat([torch.tensor([prompt], device=device).expand(len(rows), -1), target_ids], dim=1)
            hidden = llm(ids, mask, user_context=context, logits_to_keep=1).hidden_states  # (B, P + T, Dl)
        predicting = hidden[:, p - 1 : p - 1 + width][loss_mask]  # (N, Dl): position t predicts t + 1
        logits = llm.backbone.get_output_embeddings()(predicting).float()  # (N, V)
        return shard_mean(F.cross_entropy(logits, target_ids[loss_mask]), len(logits))

    def _prefix(self, prompt: list[int]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        key = tuple(prompt)
        if key not in self._prefixes:
            if len(self._prefixes) >= 64:  # grounded prompts: a batch may share more than the question
                self._prefixes.clear()
            self._prefixes[key] = prefix_kv(
                self.runner.model.llm, torch.tensor([prompt], device=self.runner.device)
            )
        return self._prefixes[key]

    # --- generic text: KL to the bare backbone ---

    def response_hidden(self, texts: Sequence[GenericText], context: UserContext | None) -> Tensor:
        """(N, Dl) last hidden states at the positions that predict the texts' response tokens (in order)."""
        llm = self.runner.model.llm
        seqs = [[*t.prompt_ids, *t.response_ids] for t in texts]
        ids, mask = left_pad(seqs, pad_token_id=self.runner.tokenizer.pad_token_id)
        ids, mask = ids.to(self.runner.device), mask.to(self.runner.device)
        predicts = torch.zeros_like(mask)  # (B, S): position t predicts token t + 1, a response token
        for b, t in enumerate(texts):
            predicts[b, ids.shape[1] - len(t.response_ids) - 1 : ids.shape[1] - 1] = True
        if self.runner.reuse_lower:  # frozen lower layers: their states on a fixed text are computed once
            lower = torch.cat([self._lower_states(t, ids.shape[1]) for t in texts])  # (B, S, Dl)
            hidden = forward_from_lower(llm, lower, mask, context)
        else:
            hidden = llm(ids, mask, user_context=context, logits_to_keep=1).hidden_states  # (B, S, Dl)
        return hidden[predicts]

    def _lower_states(self, text: GenericText, width: int) -> Tensor:
        if text not in self._lower:
            seq = torch.tensor([[*text.prompt_ids, *text.response_ids]], device=self.runner.device)
            with torch.no_grad():
                self._lower[text] = lower_states(self.runner.model.llm, seq)  # (1, S_i, Dl)
        states = self._lower[text]
        return F.pad(states, (0, 0, width - states.shape[1], 0))  # left padding: (1, S, Dl)

    @torch.no_grad()
    def prepare_teacher(self) -> None:
        """The bare backbone's top-K next-token log-probabilities on every generic response (once)."""
        head = self.runner.model.llm.backbone.get_output_embeddings()
        self._teacher = []
        for t in self.generic:
            hidden = self.response_hidden([t], None)
            logp = head(hidden).float().log_softmax(-1)  # (R, V)
            top = logp.topk(TOP_K, dim=-1)
            self._teacher.append((top.indices, top.values))
        self.teacher_mass = float(torch.cat([v for _, v in self._teacher]).exp().sum(-1).mean())

    def generic_kl(self, examples: Sequence[Example], step: int, *, first: int = 0, batch: int = 0) -> Tensor:
        """KL(bare || model with the examples' users) on one generic text per example, mean per token:
        example `i` of the global batch (`first + i` of `batch` for a part of it) reads generic text
        `step * batch + i`."""
        if not self.generic:
            raise ValueError("the generic task needs generic texts")
        if not self._teacher:
            self.prepare_teacher()
        batch = batch or len(examples)
        indices = [(step * batch + first + i) % len(self.generic) for i in range(len(examples))]
        hidden = self.response_hidden([self.generic[i] for i in indices], self.runner.context(examples))
        logq = (
            self.runner.model.llm.backbone.get_output_embeddings()(hidden).float().log_softmax(-1)
        )  # (N, V)
        ids = torch.cat([self._teacher[i][0] for i in indices])  # (N, K)
        logp = torch.cat([self._teacher[i][1] for i in indices])  # (N, K)
        return shard_mean(bucket_kl(logp, logq.gather(1, ids)), len(ids))


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of the sequences."""
    for i in range(min(len(s) for s in seqs)):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return min(len(s) for s in seqs)


def bucket_kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL over K + 1 buckets (K tokens and the rest) from (N, K) teacher / student log-probs; mean over N."""
    p, q = logp.exp(), logq.exp()
    p_rest = (1 - p.sum(-1)).clamp(min=1e-8)
    q_rest = (1 - q.sum(-1)).clamp(min=1e-8)
    kl = (p * (logp - logq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())  # (N,)
    return kl.mean()
