"""SASRec+ anchor: the public SASRec+ code trained and scored on our split and our ranking protocol.

Paper: Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?"
(RecSys 2023), SASRec trained with cross-entropy over the softmax of all items. Code driven here:
github.com/antklen/sasrec-bert4rec-recsys23, its `src/models.py` (SASRec), `src/modules.py` (SeqRec:
the loss and the Adam optimizer) and `src/datasets.py` (CausalLMDataset, PaddingCollateFn), loaded from
the checkout given by `--sasrec-src`; nothing of it is copied here.

    git clone https://github.com/antklen/sasrec-bert4rec-recsys23 /tmp/sasrec-plus
    .venv/bin/python scripts/sasrec_anchor.py --sasrec-src=/tmp/sasrec-plus/src --dataset=movielens-100k \
        --path=../shared/data/movielens-100k --minutes=10 --threads=2 --out_dir=results/anchor/ml-100k

What stands in for their `run.py`:
  - data: our loader and leave-last-out split (training/corpus.py); their model trains on our training
    timelines, our item ids >= 2 shifted to their contiguous ids 1..N (0 = padding); items unseen in
    training are dropped from input histories (their model has no unknown id);
  - their Lightning trainer: a plain loop over `SeqRec.training_step` and `SeqRec.configure_optimizers`,
    validated on our validation targets after every epoch, early stopping on NDCG@10 excluding the
    history (their `val_ndcg` with `filter_seen`; patience 10), the best epoch's weights kept; the loop
    stops, mid-epoch if need be, when `--minutes` of process CPU time (training + validation) are spent;
  - the process keeps freed memory in its heap for reuse (training/heap.py), as our training CLI does,
    so both spend the CPU budget on arithmetic rather than on mapping fresh pages for each large tensor
    (`heap_reuse` in the record; `MALLOC_MMAP_MAX_=65536` in the environment leaves glibc's default);
  - their metrics and ClearML: our `evaluate_next_item` (full ranking over all items and excluding the
    history, ties by item id, targets unseen in training are misses) into a results.json that
    `python -m training results` reads.
Their settings (src/configs/SASRec.yaml, run_final.sh for MovieLens): maxlen 200, hidden 64, 2 blocks,
1 head, dropout 0.1, lr 1e-3, batch 128, `dataset.max_length=200`.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.vocab import Vocab  # noqa: E402
from training.config import seed_everything  # noqa: E402
from training.corpus import Corpus, git_sha, load_corpus  # noqa: E402
from training.data import Event, Example  # noqa: E402
from training.evaluate import evaluate_next_item, write_results  # noqa: E402
from training.heap import keep_freed_memory  # noqa: E402
from training.overrides import apply_overrides, option_lines  # noqa: E402

FIRST_ITEM_ID = 2  # our vocabulary: 0 pad, 1 unknown, >= 2 items; theirs: 0 pad, >= 1 items
KS = (1, 5, 10)  # Recall@K of the test report, NDCG@10 (`evaluate`'s defaults)


@dataclass(frozen=True)
class AnchorConfig:
    """Data, their hyper-parameters (`src/configs/SASRec.yaml`), the budget and the output."""

    sasrec_src: str = ""  # the `src` folder of a sasrec-bert4rec-recsys23 checkout
    dataset: str = "movielens-latest"  # our data set name (training/data/registry.py)
    path: str = ""  # its folder ("" = the vendored ml-latest-small)
    max_users: int = 0  # keep only the first N users (0 = all; for smoke runs)
    maxlen: int = 200  # model_params.maxlen (positions)
    max_length: int = 200  # dataset.max_length: events per training sequence and per scored history
    hidden_units: int = 64  # model_params.hidden_units
    num_blocks: int = 2  # model_params.num_blocks
    num_heads: int = 1  # model_params.num_heads
    dropout_rate: float = 0.1  # model_params.dropout_rate
    lr: float = 1e-3  # seqrec_module.lr (Adam)
    batch_size: int = 128  # dataloader.batch_size
    eval_batch_size: int = 256  # dataloader.test_batch_size
    max_epochs: int = 100  # trainer_params.max_epochs
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    minutes: float = 10.0  # budget of process CPU time for training + validation (0 = none)
    threads: int = 1  # torch threads
    seed: int = 1337  # torch / numpy / random
    out_dir: str = "results/anchor/sasrec-plus"  # results.json goes here
    label: str = ""  # the row's model name ("" = built from the budget and length)

    def __post_init__(self) -> None:
        if self.max_length > self.maxlen:
            raise ValueError(f"max_length {self.max_length} exceeds the model's maxlen {self.maxlen}")
        if min(self.batch_size, self.eval_batch_size, self.max_epochs, self.patience, self.threads) < 1:
            raise ValueError("batch sizes, max_epochs, patience and threads must be >= 1")

    @property
    def model_name(self) -> str:
        budget = f", {self.minutes:g} CPU-min" if self.minutes else ""
        return self.label or f"anchor: SASRec+ (public code, {self.max_length} events{budget})"


# --- ids: ours <-> theirs ---


def to_sasrec(item_id: int) -> int:
    """Our item id (>= 2) -> their contiguous id (>= 1)."""
    if item_id < FIRST_ITEM_ID:
        raise ValueError(f"item id {item_id} is padding or unknown, not an item")
    return item_id - FIRST_ITEM_ID + 1


def from_sasrec(sasrec_id: int) -> int:
    """Their item id (>= 1) -> ours (>= 2)."""
    if sasrec_id < 1:
        raise ValueError(f"SASRec id {sasrec_id} is padding, not an item")
    return sasrec_id + FIRST_ITEM_ID - 1


def item_count(vocab: Vocab) -> int:
    """N, their `item_num`: the items of our vocabulary (their ids 1..N)."""
    return len(vocab) - FIRST_ITEM_ID


def sasrec_ids(events: Sequence[Event], vocab: Vocab) -> list[int]:
    """Their ids of the events' items, in time order, without the items unknown to the vocabulary."""
    ids = (vocab.encode(e.item) for e in events)
    return [to_sasrec(i) for i in ids if i >= FIRST_ITEM_ID]


def training_sequences(corpus: Corpus) -> dict[str, list[int]]:
    """User -> their ids of the training timeline (users with fewer than 2 events have no label)."""
    vocab = corpus.vocabs["item"]
    sequences = {user: sasrec_ids(events, vocab) for user, events in corpus.splits.train.items()}
    return {user: ids for user, ids in sequences.items() if len(ids) >= 2}


def vocab_scores(logits: Tensor) -> Tensor:
    """(B, N + 1) scores over their ids -> (B, N + 2) over ours: our id v reads their column v - 1."""
    return torch.cat([logits[:, :1], logits], dim=1)  # column 0 (pad) is a placeholder, never ranked


# --- scoring through our harness ---


def sasrec_scorer(model: Callable[[Tensor, Tensor], Tensor], vocab: Vocab, max_length: int):
    """A `training/evaluate.py` Scorer: `model(input_ids, attention_mask)`'s logits at the newest history
    event (as their `SeqRecBase.make_prediction`), over our vocabulary."""

    @torch.no_grad()
    def score(examples: Sequence[Example]) -> Tensor:
        histories = [torch.tensor(sasrec_ids(ex.history, vocab)[-max_length:]) for ex in examples]
        input_ids = pad_sequence(histories, batch_first=True)  # (B, T), right-padded as PaddingCollateFn
        outputs = model(input_ids, (input_ids != 0).float())  # (B, T, N + 1)
        last = (input_ids != 0).sum(dim=1) - 1  # (B,)
        return vocab_scores(outputs[torch.arange(len(examples)), last])  # (B, V)

    return score


def evaluate(
    model: nn.Module, corpus: Corpus, examples: Sequence[Example], cfg: AnchorConfig, ks: Sequence[int] = KS
) -> dict[str, Any]:
    """Our next-item report (both protocols) of their model in eval mode on the examples."""
    model.eval()
    scorer = sasrec_scorer(model, corpus.vocabs["item"], cfg.max_length)
    return evaluate_next_item(scorer, corpus, examples, ks=ks, batch_size=cfg.eval_batch_size)


# --- their code ---


def load_sasrec_plus(src: str | Path) -> dict[str, types.ModuleType]:
    """Their `models`, `modules` and `datasets` files, loaded by path under private names (their
    `datasets` would shadow the Hugging Face package). Without Lightning, `pytorch_lightning.LightningModule`
    is a plain `nn.Module` with a no-op `log`: SeqRec's loss, forward and optimizer need nothing more."""
    src = Path(src)
    if not (src / "modules.py").is_file():
        raise SystemExit(f"error: --sasrec-src={src} has no modules.py (the checkout's src folder)")
    stand_in = importlib.util.find_spec("pytorch_lightning") is None
    if stand_in:

        class LightningModule(nn.Module):
            def log(self, *args: Any, **kwargs: Any) -> None:
                pass

        sys.modules["pytorch_lightning"] = types.ModuleType("pytorch_lightning")
        sys.modules["pytorch_lightning"].LightningModule = LightningModule  # type: ignore[attr-defined]
    try:
        loaded = {}
        for name in ("models", "modules", "datasets"):
            spec = importlib.util.spec_from_file_location(f"sasrec_plus_{name}", src / f"{name}.py")
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            loaded[name] = module
    finally:
        if stand_in:  # their `modules` keeps its reference; nothing else sees the stand-in
            del sys.modules["pytorch_lightning"]
    return loaded


class SequenceFrame:
    """The one pandas chain their `LMDataset.__init__` runs,
    `df.sort_values(time).groupby(user)[item].agg(list).to_dict()`, answered from time-ordered sequences
    (pandas is not a dependency here)."""

    def __init__(self, sequences: Mapping[str, list[int]]) -> None:
        self.sequences = dict(sequences)

    def _same(self, *_: Any) -> SequenceFrame:
        return self  # the sequences are grouped by user and in time order already

    sort_values = groupby = agg = __getitem__ = _same

    def to_dict(self) -> dict[str, list[int]]:
        return dict(self.sequences)


# --- training ---


def train_epoch(seqrec: nn.Module, optimizer: Any, loader: Any, spent: Callable[[], bool]) -> list[float]:
    """One pass of their `training_step` (loss of the batch) and Adam step; stops early when `spent()`."""
    seqrec.train()
    losses = []
    for step, batch in enumerate(loader):
        loss = seqrec.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if spent():
            break
    return losses


def fit(cfg: AnchorConfig, corpus: Corpus, sasrec: Mapping[str, types.ModuleType]) -> tuple[nn.Module, dict]:
    """Train until patience, max_epochs or the CPU budget; return their SeqRec module holding the best
    validation epoch's weights, and the run's record."""
    seed_everything(cfg.seed)
    params = {
        k: getattr(cfg, k) for k in ("maxlen", "hidden_units", "num_blocks", "num_heads", "dropout_rate")
    }
    model = sasrec["models"].SASRec(item_num=item_count(corpus.vocabs["item"]), **params)
    seqrec = sasrec["modules"].SeqRec(model, lr=cfg.lr)
    optimizer = seqrec.configure_optimizers()
    frame = SequenceFrame(training_sequences(corpus))
    dataset = sasrec["datasets"].CausalLMDataset(frame, max_length=cfg.max_length)
    collate = sasrec["datasets"].PaddingCollateFn()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    budget = cfg.minutes * 60 or float("inf")

    def spent() -> bool:
        return time.process_time() - cpu0 > budget

    best: dict[str, Any] = {"ndcg@10": -1.0, "epoch": 0}
    stopped, epochs = "max_epochs", 0.0
    for epoch in range(1, cfg.max_epochs + 1):
        losses = train_epoch(seqrec, optimizer, loader, spent)
        epochs = epoch - 1 + len(losses) / len(loader)
        valid = evaluate(seqrec.model, corpus, corpus.splits.valid, cfg, ks=(10,))["exclude_history"]
        if valid["ndcg@10"] > best["ndcg@10"]:
            state = {k: v.detach().clone() for k, v in seqrec.state_dict().items()}
            best = {"ndcg@10": valid["ndcg@10"], "epoch": epoch, "state": state, "valid": valid}
        print(
            f"epoch {epochs:.2f} | loss {sum(losses) / len(losses):.4f} | val excl. hist. ndcg@10 "
            f"{valid['ndcg@10']:.4f} recall@10 {valid['recall@10']:.4f} | best {best['ndcg@10']:.4f} "
            f"(epoch {best['epoch']}) | cpu {time.process_time() - cpu0:.0f} s "
            f"| wall {time.perf_counter() - wall0:.0f} s",
            flush=True,
        )
        if spent() or epoch - best["epoch"] >= cfg.patience:
            stopped = "budget" if spent() else "patience"
            break
    seqrec.load_state_dict(best["state"])
    return seqrec, {
        "epochs": round(epochs, 2),
        "best_epoch": best["epoch"],
        "stopped": stopped,
        "valid_exclude_history": best["valid"],
        "train_cpu_seconds": round(time.process_time() - cpu0, 1),
        "train_wall_seconds": round(time.perf_counter() - wall0, 1),
    }


# --- main ---


def main(cfg: AnchorConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Load, train, test, write `out_dir/results.json`; returns the results row."""
    wall0 = time.perf_counter()
    heap_reuse = keep_freed_memory()
    torch.set_num_threads(cfg.threads)
    sasrec = load_sasrec_plus(cfg.sasrec_src)
    corpus = load_corpus(cfg.dataset, cfg.path or None, max_users=cfg.max_users)
    print(
        f"{corpus.dataset.name}: {len(corpus.splits.test)} test users, {item_count(corpus.vocabs['item'])} "
        f"items in training, {cfg.threads} thread(s), budget {cfg.minutes:g} CPU-min",
        flush=True,
    )
    seqrec, record = fit(cfg, corpus, sasrec)
    test = evaluate(seqrec.model, corpus, corpus.splits.test, cfg)
    src = Path(cfg.sasrec_src)
    record.update(
        wall_seconds=round(time.perf_counter() - wall0, 1),
        cpu_seconds=round(time.process_time(), 1),
        threads=cfg.threads,
        heap_reuse=heap_reuse,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        code="antklen/sasrec-bert4rec-recsys23",
        commit=git_sha(src) if (src.resolve().parent / ".git").exists() else None,
        config=asdict(cfg),
    )
    result = {
        "model": cfg.model_name,
        "next_item": test,
        "dataset": corpus.dataset.name,
        "split": "test",
        "data_sha256": corpus.data_sha256,
        "anchor": record,
        "command": " ".join(["python scripts/sasrec_anchor.py", shlex.join(argv)]).strip(),
    }
    path = write_results([result], cfg.out_dir)
    every, excl = test["all_items"], test["exclude_history"]
    print(
        f"test recall@10 {every['recall@10']:.4f} (all) / {excl['recall@10']:.4f} (excl. hist.), ndcg@10 "
        f"{excl['ndcg@10']:.4f} (excl. hist.) | {record['epochs']} epochs, best {record['best_epoch']} "
        f"({record['stopped']}) | wall {record['wall_seconds']:.0f} s, cpu {record['cpu_seconds']:.0f} s",
        flush=True,
    )
    print(f"wrote {path}", flush=True)
    return result


def cli(argv: Sequence[str]) -> int:
    """`--key=value` options -> a run; `--help` lists the options with their defaults; a bad option or
    value is one line on stderr and exit code 2 (the training CLI's convention), not a traceback."""
    if any(a in ("-h", "--help") for a in argv):
        summary = __doc__.split("\n\n")[0]  # the module docstring's first paragraph
        print(f"{summary}\n\npython scripts/sasrec_anchor.py [--key=value ...]\n")
        print("\n".join(option_lines(AnchorConfig())))
        return 0
    try:
        cfg = apply_overrides(AnchorConfig(), argv)
    except ValueError as exc:  # ConfigError too (an unknown option, a bad value)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    main(cfg, argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
