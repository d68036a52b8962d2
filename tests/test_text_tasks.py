"""Multi-task fine-tuning with the language tasks, on a tiny random Llama that uses the real tokenizer.

- the reused-lower-layers path of the LM loss equals the full forward;
- the generic KL keeps generic text read with a user's tokens close to the bare backbone, where the
  scoring-only recipe (same gates, same steps) drifts away: the bound separates the two;
- one multi-task checkpoint answers every task of the service (next item, genre, review, chat);
- `text-check` reports and fails loudly on degenerate text (a random tiny backbone writes nothing fluent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import pretrain_tiny_encoder, tiny_backbone_or_skip

from models.checkpoint import load_checkpoint
from models.generation import SamplingParams
from models.prompts import display_title
from training.cli import main as cli
from training.config import FinetuneConfig
from training.corpus import load_corpus, vocabs_from_dict
from training.evaluate import userllm_runner
from training.finetune import main as finetune
from training.generic_text import HELD_OUT, generic_texts, load_prompts
from training.tasks import TaskRunner, training_examples
from training.text_eval import perplexity_ratio
from training.text_tasks import TextTasks
from training.userllm_setup import build_model

pytestmark = pytest.mark.backbone

MULTITASK = "next_item,favourite_category,generic,taste,suggest,generic"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Training tests run on one thread (fixture in conftest.py)."""


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # peaked next-token distributions, like a trained LM's: the generic KL keeps the teacher's top 64
    return tiny_backbone_or_skip(tmp_path_factory.mktemp("tiny-backbone"), head_scale=8.0)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny_encoder(tmp_path_factory.mktemp("text-encoder"))


def _config(tiny_backbone: Path, encoder_dir: Path, out: Path, **overrides) -> FinetuneConfig:
    base = dict(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(out / "userllm"),
        run_dir=str(out / "run"), max_users=12, steps=2, batch_size=4, warmup=1, eval_interval=1000,
        save_interval=1000, log_interval=1000, eval_users=4, cross_attn_layers="-1", gate_init=0.5,
        progress=False,
    )  # fmt: skip
    return FinetuneConfig(**(base | overrides))


def _text_tasks(cfg: FinetuneConfig, reuse_lower: bool) -> TextTasks:
    encoder_ck = load_checkpoint(cfg.encoder_dir)
    corpus = load_corpus(cfg.dataset, max_users=12, vocabs=vocabs_from_dict(encoder_ck.extras["vocab"]))
    torch.manual_seed(0)
    model, tokenizer, backbone_dir = build_model(cfg, encoder_ck, corpus)
    runner = TaskRunner(model.eval(), tokenizer, corpus, reuse_lower=reuse_lower)
    train, _ = generic_texts(model.llm, tokenizer, backbone_dir, progress=False)
    return TextTasks(runner, train)


def test_language_losses_with_reused_lower_layers_equal_the_full_forward(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_backbone, encoder_dir, tmp_path)
    fast, full = _text_tasks(cfg, reuse_lower=True), _text_tasks(cfg, reuse_lower=False)
    examples = training_examples(fast.runner.corpus, 50)[::97][:4]
    with torch.no_grad():
        for task in ("taste", "suggest", "generic"):
            pool = fast.pool(examples, task)
            a, b = fast.loss(pool, task, step=1), full.loss(pool, task, step=1)
            assert float(a) > 0 or task == "generic"
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_suggest_is_given_the_item_and_scored_on_the_answer_alone(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
) -> None:
    """The suggest instruction carries the target item's catalogue entry; the batch loss (prompts that
    differ after a shared prefix) is the token-weighted mean of each example's loss alone, so the
    per-example part of the prompt is read, not scored."""
    tasks = _text_tasks(_config(tiny_backbone, encoder_dir, tmp_path), reuse_lower=True)
    catalogue = tasks.runner.corpus.catalogue
    examples = tasks.pool(training_examples(tasks.runner.corpus, 50)[::37], "suggest")[:4]
    assert len({ex.target.item for ex in examples}) == 4
    pairs = [tasks.pair(ex, "suggest", 0) for ex in examples]
    for ex, (question, target) in zip(examples, pairs, strict=True):
        entry = catalogue[ex.target.item]
        assert question.startswith("Suggest a movie for me tonight and say why.\nRecommended movie: ")
        assert display_title(entry["title"]) in question and display_title(entry["title"]) in target
        assert all(c in question for c in entry["categories"])
    tok = tasks.runner.tokenizer
    counts = [
        len(tok(t, add_special_tokens=False)["input_ids"][: tasks.max_target_tokens]) + 1 for _, t in pairs
    ]
    with torch.no_grad():
        batch = tasks.loss(examples, "suggest", step=0)
        alone = [tasks.loss([ex], "suggest", step=0) for ex in examples]
    weighted = sum(float(a) * n for a, n in zip(alone, counts, strict=True)) / sum(counts)
    assert abs(float(batch) - weighted) < 1e-4 * weighted, (float(batch), weighted)


def test_generic_kl_keeps_generic_text_close_to_the_backbone(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
) -> None:
    """Perplexity ratio on held-out generic text, user vs bare backbone, after 48 steps with the gates at
    0.5: the bound holds with the generic KL in the task cycle and fails for the scoring-only tasks."""
    ratios = {}
    for name, tasks in (("scoring", "next_item,favourite_category"), ("multitask", "next_item,generic")):
        cfg = _config(
            tiny_backbone, encoder_dir, tmp_path / name, tasks=tasks, steps=48, lr=3e-3, min_lr=3e-4
        )
        finetune(cfg)
        runner = userllm_runner(load_checkpoint(cfg.out_dir), _text_tasks(cfg, True).runner.corpus)
        _, held_out = generic_texts(runner.model.llm, runner.tokenizer, str(tiny_backbone), progress=False)
        examples = runner.corpus.splits.test[:8]
        ratios[name] = perplexity_ratio(TextTasks(runner), held_out, examples)["ppl_ratio"]
    assert ratios["multitask"] <= 1.6 < ratios["scoring"], ratios  # measured: 1.34 and 3.67


def test_one_multitask_checkpoint_answers_every_task_and_text_check_fails_on_garbage(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.engine import GenerateJob, ScoreJob, TorchEngine, UserInput

    cfg = _config(tiny_backbone, encoder_dir, tmp_path, tasks=MULTITASK, steps=6, text_batch_size=2)
    summary = finetune(cfg)
    assert {"val_taste", "val_suggest", "val_generic"} <= set(summary["last"])
    engine = TorchEngine.load(Path(cfg.out_dir), tiny_backbone, device="cpu")
    shape = (engine.model.config.tower.num_user_tokens, engine.model.config.tower.dim_user)
    user = UserInput(np.random.default_rng(0).standard_normal(shape).astype(np.float16))
    items, genre = engine.score_batch([ScoreJob(user, k=3), ScoreJob(user, k=1, task="genre")])
    assert len(items.items) == 3 and genre.categories
    params = SamplingParams(max_new_tokens=4)
    review, chat = engine.generate_batch([
        GenerateJob(user, engine.review_prompt(next(iter(engine.codec.catalogue)), 4.0), params),
        GenerateJob(user, engine.chat_prompt("Suggest a movie for tonight and say why."), params),
    ])  # fmt: skip
    assert review.completion_tokens > 0 and chat.completion_tokens > 0
    code = cli(["text-check", f"--checkpoint={cfg.out_dir}", "--max_users=12", "--text_users=4",
                f"--out_dir={tmp_path / 'check'}"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1 and "check FAILED: degenerate text" in err
    assert "generic-text perplexity" in out and "targets missed" in out
    assert "chat_year_right" in out and "chat_reason_right" in out  # the facts of the suggestions
    assert (tmp_path / "check" / "text.json").is_file()


def test_text_check_reads_a_pplug_checkpoint(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PPlug conditions the input embeddings: the text check runs it through the whole LLM (no lower
    layers to reuse) and reports, instead of stopping with an error."""
    cfg = _config(tiny_backbone, encoder_dir, tmp_path, mode="pplug", tasks="next_item,generic", steps=2)
    finetune(cfg)
    vocabs = vocabs_from_dict(load_checkpoint(cfg.encoder_dir).extras["vocab"])
    corpus = load_corpus(cfg.dataset, max_users=12, vocabs=vocabs)
    runner = userllm_runner(load_checkpoint(cfg.out_dir), corpus)
    assert not runner.reuse_lower  # the prefix enters at the input: every layer reads the user
    code = cli(["text-check", f"--checkpoint={cfg.out_dir}", "--max_users=12", "--text_users=2",
                f"--out_dir={tmp_path / 'check'}"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code in (0, 1) and "generic-text perplexity" in out  # 2 = the check could not run
    assert (tmp_path / "check" / "text.json").is_file()


def test_degenerate_compares_loops_with_the_bare_backbone() -> None:
    from training.text_eval import degenerate, missed_targets

    def report(user_loops: float, bare_loops: float, ratio: float = 1.01) -> dict:
        rep = {"distinct_2": 0.9, "looping": user_loops, "empty": 0.0}
        bare = {**rep, "looping": bare_loops}
        return {"fluency": {"ppl_ratio": ratio}, "user": {"repetition": {"review": rep}},
                "cold_start": {"repetition": {"review": bare}}}  # fmt: skip

    assert missed_targets(report(0.02, 0.02)) == ["review: 2% of the samples loop"]
    assert degenerate(report(0.02, 0.02)) == []  # the bare backbone repeats itself as often
    assert degenerate(report(0.08, 0.04)) == []  # one sample more of 24: within LOOP_MARGIN
    assert degenerate(report(0.15, 0.04)) == ["review: 15% of the samples loop (4% without the user)"]
    assert degenerate(report(0.5, 0.02)) == ["review: 50% of the samples loop (2% without the user)"]
    assert degenerate(report(0.0, 0.0, ratio=33.9)) == ["generic-text perplexity ratio 33.900 > 1.2"]


def test_generic_prompts_file_has_a_held_out_part() -> None:
    prompts = load_prompts()
    assert len(prompts) > HELD_OUT + 100 and len(set(prompts)) == len(prompts)
