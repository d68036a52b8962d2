"""TrainConfig overrides (nanoGPT configurator behaviour without exec), get_lr, seeding."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from training.config import (
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    TrainConfig,
    apply_overrides,
    get_lr,
    parse_overrides,
    seed_everything,
)


def test_overrides_are_typed() -> None:
    cfg = apply_overrides(
        TrainConfig(),
        ["--steps=10", "--lr=3e-4", "--progress=false", "--path=none", "--category=All_Beauty", "--resume"],
    )
    assert (cfg.steps, cfg.lr, cfg.progress, cfg.path, cfg.category, cfg.resume) == (
        10, 3e-4, False, None, "All_Beauty", True,
    )  # fmt: skip
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float)


def test_dashes_in_keys_map_to_underscores() -> None:
    assert parse_overrides(TrainConfig, ["--batch-size=4"]) == {"batch_size": 4}


def test_unknown_key_names_the_closest_field() -> None:
    with pytest.raises(ConfigError, match=r"unknown option --batchsize \(did you mean --batch_size\?\)"):
        parse_overrides(TrainConfig, ["--batchsize=4"])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--steps=ten", r"--steps expects an integer, got 'ten'"),
        ("--steps=1.5", r"--steps expects an integer"),
        ("--lr=fast", r"--lr expects a number, got 'fast'"),
        ("--progress=maybe", r"--progress expects a boolean"),
        ("--fusion=middle", r"--fusion must be one of early, late; got 'middle'"),
        ("--steps", r"--steps needs a value"),
        ("steps=3", r"expected --key=value"),
    ],
)
def test_bad_values_raise_clear_errors(arg: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), [arg])


def test_invariants_are_checked_after_overrides() -> None:
    with pytest.raises(ConfigError, match="min_lr"):
        apply_overrides(TrainConfig(), ["--lr=1e-4", "--min_lr=1e-3"])
    with pytest.raises(ConfigError, match="divisible"):
        apply_overrides(TrainConfig(), ["--d_model=30"])
    with pytest.raises(ConfigError, match="tasks"):
        apply_overrides(FinetuneConfig(), ["--tasks=next_item,poetry"])
    with pytest.raises(ConfigError, match="recent_events must be >= 0, got -5"):
        apply_overrides(TrainConfig(), ["--recent_events=-5"])
    with pytest.raises(ConfigError, match="select_by=ndcg needs the next_item task"):
        apply_overrides(FinetuneConfig(), ["--select_by=ndcg", "--tasks=favourite_category"])
    with pytest.raises(ConfigError, match="ks"):
        EvalConfig(ks="1,x")


def test_configs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        TrainConfig().steps = 3  # type: ignore[misc]


def test_subclass_fields_and_defaults() -> None:
    cfg = apply_overrides(FinetuneConfig(), ["--strategy=lora", "--mode=soft_prompt", "--steps=7"])
    assert (cfg.strategy, cfg.mode, cfg.steps, cfg.out_dir) == (
        "lora",
        "soft_prompt",
        7,
        "checkpoints/userllm",
    )
    with pytest.raises(ConfigError, match="--strategy must be one of"):
        apply_overrides(FinetuneConfig(), ["--strategy=half"])


def test_run_dir_defaults_beside_the_checkpoint_name() -> None:
    assert TrainConfig(out_dir="checkpoints/encoder/").resolved_run_dir == "runs/encoder"
    assert TrainConfig(run_dir="/tmp/x").resolved_run_dir == "/tmp/x"


def test_get_lr_warmup_then_cosine_to_min_lr() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup=10, steps=110)
    lrs = [get_lr(s, cfg) for s in range(120)]
    warm = lrs[:10]
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))  # linear increase
    assert warm[0] == pytest.approx(1e-3 / 11)
    assert lrs[10] == pytest.approx(1e-3)  # peak right after warmup
    decay = lrs[10:111]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # monotone decay
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2)  # half way: the cosine midpoint
    assert lrs[110] == pytest.approx(1e-4) and lrs[119] == pytest.approx(1e-4)
    assert get_lr(50, cfg, total_steps=10) == pytest.approx(1e-4)


def test_seed_everything_repeats_python_numpy_torch() -> None:
    import numpy as np

    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first


def test_named_recipes_apply_before_the_other_options_and_are_all_valid() -> None:
    from training.cli import COMMANDS
    from training.recipes import RECIPES, resolve_config

    for (command, name), recipe in RECIPES.items():
        cfg = resolve_config(command, COMMANDS[command][0](), [f"--recipe={name}"])
        assert cfg.recipe == name
        assert all(getattr(cfg, key) == value for key, value in recipe.values.items())
    cfg = resolve_config("finetune", FinetuneConfig(), ["--recipe=demo", "--steps=7", "--out_dir=x"])
    assert (cfg.steps, cfg.out_dir, cfg.tasks) == (7, "x", RECIPES[("finetune", "demo")].values["tasks"])
    assert cfg.task_list.count("suggest") == 2  # the grounded suggestion twice per cycle
    with pytest.raises(ConfigError, match="unknown recipe 'nope' for finetune"):
        resolve_config("finetune", FinetuneConfig(), ["--recipe=nope"])
    with pytest.raises(ConfigError, match="unknown recipe 'demo-next-item' for pretrain-encoder"):
        resolve_config("pretrain-encoder", TrainConfig(), ["--recipe=demo-next-item"])


def test_orthogonal_encoder_recipes_are_the_measured_runs() -> None:
    """docs/results.md measured ml-100k-d64-orth as the d-64 recipe plus --tied_head_init=orthogonal,
    ml-latest-d64-orth as those options on ml-latest-small, the -fusion recipes as each of them plus
    --fusion_init=orthogonal, ml-latest-d64-orth-fusion-200 as the latter plus --window=200
    --stride=200 --sampling=last --batch_size=64 --epochs=80, and ml-latest-d64-orth-fusion-side025 as
    ml-latest-d64-orth-fusion plus --side_loss_weight=0.25: the recipes must stay those runs."""
    from training.recipes import resolve_config

    def resolved(*argv: str) -> dict:
        cfg = dataclasses.asdict(resolve_config("pretrain-encoder", TrainConfig(), argv))
        return {k: v for k, v in cfg.items() if k != "recipe"}

    measured = resolved("--recipe=ml-100k-rotary-tied-seen-d64", "--tied_head_init=orthogonal")
    assert resolved("--recipe=ml-100k-d64-orth") == measured
    latest = dict(measured, dataset="movielens-latest", path=None, eval_interval=50, log_interval=50,
                  save_interval=1000)  # fmt: skip
    assert resolved("--recipe=ml-latest-d64-orth") == latest
    fusion = {"fusion_init": "orthogonal"}  # the same runs with the event-fusion projection orthogonal
    assert resolved("--recipe=ml-100k-d64-orth-fusion") == dict(measured, **fusion)
    assert resolved("--recipe=ml-latest-d64-orth-fusion") == dict(latest, **fusion)
    newest_200 = dict(window=200, stride=200, sampling="last", batch_size=64, epochs=80)  # SASRec+'s data
    assert resolved("--recipe=ml-latest-d64-orth-fusion-200") == dict(latest, **fusion, **newest_200)
    side = dict(side_loss_weight=0.25)  # genre and rating losses at a quarter of the item loss's weight
    assert resolved("--recipe=ml-latest-d64-orth-fusion-side025") == dict(latest, **fusion, **side)


def test_the_ndcg_selected_userllm_recipe_is_the_measured_run() -> None:
    """docs/results.md measured ml-100k-next-item-skip-proj-ndcg as the frozen-encoder recipe plus
    --select_by=ndcg --lr=1e-4 --min_lr=1e-5, and ml-latest-next-item-skip-proj-ndcg as that recipe on
    ml-latest-small."""
    from training.recipes import resolve_config

    def resolved(*argv: str) -> dict:
        cfg = dataclasses.asdict(resolve_config("finetune", FinetuneConfig(), argv))
        return {k: v for k, v in cfg.items() if k != "recipe"}

    measured = resolved(
        "--recipe=ml-100k-next-item-skip-proj", "--select_by=ndcg", "--lr=1e-4", "--min_lr=1e-5"
    )
    assert resolved("--recipe=ml-100k-next-item-skip-proj-ndcg") == measured
    on_latest = dict(measured, dataset="movielens-latest", path=None)  # the same run on ml-latest-small
    assert resolved("--recipe=ml-latest-next-item-skip-proj-ndcg") == on_latest


def test_the_demo_recipe_is_the_measured_grounded_suggestion_run() -> None:
    """docs/text.md measured the demo checkpoint as the multi-task cycle with the grounded suggestion
    twice and the generic KL once; the PPlug demo keeps the cycle with the KL twice."""
    from training.recipes import resolve_config

    def resolved(recipe: str, *argv: str) -> dict:
        cfg = dataclasses.asdict(resolve_config("finetune", FinetuneConfig(), [f"--recipe={recipe}", *argv]))
        return {k: v for k, v in cfg.items() if k != "recipe"}

    suggest_twice = "--tasks=next_item,favourite_category,suggest,taste,suggest,generic"
    kl_twice = "next_item,favourite_category,generic,taste,suggest,generic"
    assert resolved("demo") == resolved("demo", suggest_twice)
    assert resolved("demo-pplug")["tasks"] == kl_twice


def test_the_demo_pair_is_the_measured_one() -> None:
    """docs/results.md "Demo checkpoints" measured the pair make train-demo trains: the encoder of
    ml-latest-d64-orth-fusion-side025, and the USER-LLM with that encoder frozen and read by the heads
    (strategy proj, head_user_skip on the 17th user token)."""
    from training.recipes import resolve_config

    def encoder(recipe: str) -> dict:
        cfg = dataclasses.asdict(resolve_config("pretrain-encoder", TrainConfig(), [f"--recipe={recipe}"]))
        return {k: v for k, v in cfg.items() if k != "recipe"}

    assert encoder("demo") == encoder("ml-latest-d64-orth-fusion-side025")
    assert encoder("demo")["side_loss_weight"] == 0.25 and encoder("demo")["positions"] == "rotary"
    userllm = resolve_config("finetune", FinetuneConfig(), ["--recipe=demo"])
    assert (userllm.strategy, userllm.head_user_skip, userllm.last_event_token) == ("proj", True, True)


def test_run_files_go_beside_an_output_outside_the_current_directory(tmp_path) -> None:
    from training.config import TrainConfig, default_run_dir

    assert default_run_dir("checkpoints/encoder", "run") == "runs/encoder"
    assert default_run_dir("../elsewhere/encoder", "run") == "../elsewhere/runs/encoder"
    outside = tmp_path / "models" / "encoder"
    assert TrainConfig(out_dir=str(outside)).resolved_run_dir == str(tmp_path / "models" / "runs" / "encoder")
    assert TrainConfig(out_dir=str(outside), run_dir="my-run").resolved_run_dir == "my-run"


def test_the_commands_are_installed_and_run_from_any_directory(tmp_path) -> None:
    """`make install` installs the project: `userllm-train` works outside the repository."""
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).parent / "userllm-train"
    assert command.is_file(), "run `make install` (pip install -e .) to get the userllm-* commands"
    done = subprocess.run([command, "evaluate", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--checkpoint=" in done.stdout and "No module named" not in done.stderr
