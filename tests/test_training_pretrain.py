"""CPU smoke test of encoder pretraining: a few steps on a tiny slice, the checkpoint file set, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, load_state_strict
from models.user_encoder import UserEncoder, UserEncoderConfig
from training import cli
from training.config import TrainConfig
from training.pretrain import main

CHECKPOINT_FILES = {"model.safetensors", "config.json", "manifest.json", "vocab.json", "catalogue.json"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Training tests run on one thread (fixture in conftest.py)."""


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, dict]:
    root = tmp_path_factory.mktemp("pretrain")
    cfg = TrainConfig.tiny(out_dir=str(root / "encoder"), run_dir=str(root / "run"))
    return cfg, main(cfg)


def test_checkpoint_file_set_and_strict_reload(trained: tuple[TrainConfig, dict]) -> None:
    cfg, summary = trained
    out = Path(cfg.out_dir)
    assert {p.name for p in out.iterdir()} == CHECKPOINT_FILES
    assert {p.name for p in Path(cfg.resolved_run_dir).iterdir()} == {"log.jsonl", "trainer_state.pt", "last"}
    assert {p.name for p in (Path(cfg.resolved_run_dir) / "last").iterdir()} == CHECKPOINT_FILES
    ck = load_checkpoint(out)
    assert set(ck.config) == {"encoder"}
    encoder = UserEncoder(UserEncoderConfig(**ck.config["encoder"]))
    load_state_strict(encoder, ck.state_dict)  # no prefix, nothing missing
    manifest = ck.manifest
    assert manifest["kind"] == "encoder" and manifest["model_version"].startswith("encoder-")
    assert manifest["dataset"] == "movielens-latest" and len(manifest["data_sha256"]) == 64
    assert manifest["seed"] == cfg.seed and manifest["train_config"]["steps"] == cfg.steps
    assert summary["step"] == cfg.steps


def test_vocab_items_are_all_in_the_catalogue(trained: tuple[TrainConfig, dict]) -> None:
    cfg, _ = trained
    ck = load_checkpoint(cfg.out_dir)
    vocab, catalogue = ck.extras["vocab"], ck.extras["catalogue"]
    assert set(vocab) == {"item", "category", "rating"}
    assert set(vocab["item"]["tokens"]) == set(catalogue)
    entry = next(iter(catalogue.values()))
    assert set(entry) == {"title", "categories"} and isinstance(entry["categories"], list)
    assert ck.config["encoder"]["features"][0]["vocab_size"] == len(vocab["item"]["tokens"]) + 2


def test_log_lines_and_jsonl(trained: tuple[TrainConfig, dict], capsys: pytest.CaptureFixture) -> None:
    cfg, _ = trained
    records = _log(Path(cfg.resolved_run_dir))
    assert [r["iter"] for r in records] == [2, 3, 4, 6]  # log_interval 2, plus every validation (3, 6)
    assert {"iter", "loss", "val", "lr", "ms"} <= set(records[-1])
    assert records[-1]["val"] is not None and "val_recall@10" in records[-1]


def test_resume_continues_the_step_counter(trained: tuple[TrainConfig, dict]) -> None:
    cfg, _ = trained
    with (Path(cfg.resolved_run_dir) / "log.jsonl").open("a") as log:  # an interrupted run logged past step 6
        log.write(json.dumps({"iter": 7, "loss": 1.0, "val": None, "lr": 0.0, "ms": 1.0}) + "\n")
    more = TrainConfig.tiny(out_dir=cfg.out_dir, run_dir=cfg.run_dir, steps=10, resume=True)
    summary = main(more)
    assert summary["step"] == 10
    iters = [r["iter"] for r in _log(Path(cfg.resolved_run_dir))]
    assert iters == [2, 3, 4, 6, 8, 9, 10]  # continues from the saved step 6; the stray 7 is dropped
    state = torch.load(Path(cfg.resolved_run_dir) / "trainer_state.pt", weights_only=False)
    assert state["step"] == 10 and set(state["rng"]) == {"python", "numpy", "torch"}
    assert load_checkpoint(Path(cfg.resolved_run_dir) / "last").manifest["step"] == 10


def test_same_seed_same_weights(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = TrainConfig.tiny(out_dir=str(tmp_path / name), run_dir=str(tmp_path / f"{name}-run"), steps=3)
        main(cfg)
        runs.append(load_checkpoint(tmp_path / name).state_dict)
    for key, value in runs[0].items():
        torch.testing.assert_close(value, runs[1][key], rtol=0, atol=0)


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["pretrain-encoder", "--stepz=3"]) == 2
    assert "did you mean --steps" in capsys.readouterr().err
    assert cli.main(["pretrain-encoder", "--steps=many"]) == 2
    assert "expects an integer" in capsys.readouterr().err
    assert cli.main(["nonsense"]) == 2
    assert cli.main(["pretrain-encoder", "--help"]) == 0
    assert "--window=50" in capsys.readouterr().out


FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.mark.parametrize(
    "data",
    [
        ["--dataset=movielens-latest", f"--path={FIXTURES / 'ml-latest-small'}"],  # same name, other files
        ["--dataset=amazon-2018", f"--path={FIXTURES / 'amazon-2018'}", "--category=Magazine_Subscriptions"],
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "baselines"])
def test_a_checkpoint_pointed_at_other_data_is_an_error_naming_both(
    trained: tuple[TrainConfig, dict], data: list[str], command: str, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    cfg, _ = trained
    args = [command, f"--checkpoint={cfg.out_dir}", f"--out_dir={tmp_path}", *data]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "DataMismatch" in err and f"checkpoint {cfg.out_dir} was trained on movielens-latest" in err
    assert data[0].split("=")[1] in err.split("but the data given")[1]  # the other data set, named
    assert not (tmp_path / "results.json").exists()


def test_a_checkpoint_evaluates_on_its_own_data(trained: tuple[TrainConfig, dict], tmp_path: Path) -> None:
    cfg, _ = trained
    args = ["evaluate", f"--checkpoint={cfg.out_dir}", f"--out_dir={tmp_path}",
            f"--max_users={cfg.max_users}"]
    assert cli.main(args) == 0 and (tmp_path / "results.json").is_file()


def test_log_lines_reach_a_redirected_stdout_while_the_run_goes_on(tmp_path: Path) -> None:
    """With stdout a pipe (block-buffered), each `iter N | loss` line arrives when it is logged."""
    import select
    import subprocess
    import sys

    child = (
        "import sys\n"
        "from training.run import RunLog\n"
        f"log = RunLog({str(tmp_path)!r}, start=0, total=10, progress=False, resume=False)\n"
        "log.log(1, loss=2.5, val=None, lr=1e-3)\n"
        "sys.stdin.readline()\n"  # the run goes on until the parent has read the line
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no log line on the pipe while the run goes on"
        assert proc.stdout.readline().startswith("iter 1 | loss 2.5000")
    finally:
        proc.communicate("\n", timeout=30)


def test_side_loss_weight_zero_trains_the_item_loss_alone() -> None:
    torch.manual_seed(0)
    encoder = UserEncoder(UserEncoderConfig.tiny())
    names = [f.name for f in encoder.config.features]
    assert encoder.feature_weights(1.0).tolist() == pytest.approx([1 / len(names)] * len(names))
    weights = dict(zip(names, encoder.feature_weights(0.25).tolist(), strict=True))
    assert weights["item"] == pytest.approx(4 * weights["category"])
    assert sum(weights.values()) == pytest.approx(1)
    feats = {f.name: torch.randint(2, f.vocab_size, (2, 6)) for f in encoder.config.features}
    feats["category"] = torch.randint(2, 5, (2, 6, 2))
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        losses = encoder.pretrain_losses(feats, mask)
        item_only = encoder.pretrain_loss(feats, mask, side_weight=0.0)
        mean = encoder.pretrain_loss(feats, mask)
    assert float(item_only) == pytest.approx(float(losses["item"]))
    assert float(mean) == pytest.approx(float(torch.stack([*losses.values()]).mean()))
    with pytest.raises(ValueError, match="side_weight"):
        encoder.feature_weights(-1.0)


def test_select_by_ndcg_keeps_the_best_ranking_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig.tiny(
        out_dir=str(tmp_path / "encoder"), run_dir=str(tmp_path / "run"), select_by="ndcg",
        side_loss_weight=0.0, steps=6, eval_interval=2,
    )  # fmt: skip
    main(cfg)
    validated = [r for r in _log(tmp_path / "run") if "val_x_ndcg@10" in r]
    assert [r["iter"] for r in validated] == [2, 4, 6]
    for r in validated:  # "val" is minus the NDCG excluding history; the loss is logged beside it
        assert r["val"] == pytest.approx(-r["val_x_ndcg@10"]) and r["val_loss"] > 0
        assert r["val_x_recall@10"] >= 0 and r["val_recall@10"] >= 0
    best = min(validated, key=lambda r: (r["val"], r["iter"]))  # the first of equal values is kept
    assert load_checkpoint(cfg.out_dir).manifest["step"] == best["iter"]


def test_rotary_tied_encoder_trains_saves_and_reloads(tmp_path: Path) -> None:
    """The options of the recipe ml-100k-rotary-tied reach the saved encoder, which reloads strictly and
    scores as it did in training (tied head and rotary attention included)."""
    from training.evaluate import load_encoder

    cfg = TrainConfig.tiny(
        out_dir=str(tmp_path / "encoder"), run_dir=str(tmp_path / "run"), positions="rotary",
        tie_item_head=True, init_std=0.02, tied_head_init="orthogonal", fusion_init="orthogonal",
    )  # fmt: skip
    main(cfg)
    encoder, _, ck = load_encoder(cfg.out_dir)
    assert ck.config["encoder"]["positions"] == "rotary" and ck.config["encoder"]["tie_item_head"]
    assert ck.config["encoder"]["tied_head_init"] == "orthogonal"
    assert ck.config["encoder"]["fusion_init"] == "orthogonal"
    assert encoder.pos_emb is None and type(encoder.heads["item"]).__name__ == "TiedItemHead"
    last = UserEncoder(UserEncoderConfig(**ck.config["encoder"]))
    load_state_strict(last, load_checkpoint(Path(cfg.resolved_run_dir) / "last").state_dict)
    assert last.heads["item"].weight.shape == (encoder.config.features[0].vocab_size, encoder.config.d_model)


def test_one_window_per_user_sampling_sizes_the_epoch_by_users(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--sampling=users`: an epoch is one window per user (12 users), so `epochs` resolves to steps of
    users, not of stride windows; the run trains and saves like the default."""
    cfg = TrainConfig.tiny(
        out_dir=str(tmp_path / "encoder"), run_dir=str(tmp_path / "run"), sampling="users", epochs=2.0,
        steps=1,
    )  # fmt: skip
    summary = main(cfg)
    assert "on 12 windows, steps 0 -> 4" in capsys.readouterr().out  # 2 epochs x ceil(12 / 8) steps
    assert Path(summary["out_dir"], "model.safetensors").is_file()
    assert cli.main(["pretrain-encoder", "--sampling=everything"]) == 2


def test_ema_keeps_the_averaged_weights_and_resume_continues_them(tmp_path: Path) -> None:
    """With ema_decay the best checkpoint holds the averages (the trainer state's), `last/` the raw
    weights, and 3 + 3 resumed steps end where 6 straight steps do (a flat learning rate after the
    warmup, so the schedule does not depend on the run's length)."""
    tiny = dict(ema_decay=0.5, eval_interval=6, save_interval=3, min_lr=1e-3)
    straight = TrainConfig.tiny(out_dir=str(tmp_path / "a"), run_dir=str(tmp_path / "a-run"), **tiny)
    main(straight)
    state = torch.load(tmp_path / "a-run" / "trainer_state.pt", weights_only=False)
    best = load_checkpoint(tmp_path / "a").state_dict
    raw = load_checkpoint(tmp_path / "a-run" / "last").state_dict
    encoder = UserEncoder(UserEncoderConfig(**load_checkpoint(tmp_path / "a").config["encoder"]))
    names = [name for name, _ in encoder.named_parameters()]
    assert len(names) == len(state["ema"]["averages"])
    for name, average in zip(names, state["ema"]["averages"], strict=True):
        torch.testing.assert_close(best[name], average)
    assert any(not torch.equal(best[name], raw[name]) for name in names)

    halves = dict(out_dir=str(tmp_path / "b"), run_dir=str(tmp_path / "b-run"), **tiny)
    main(TrainConfig.tiny(steps=3, **halves))
    main(TrainConfig.tiny(steps=6, resume=True, **halves))
    resumed = torch.load(tmp_path / "b-run" / "trainer_state.pt", weights_only=False)
    for a, b in zip(state["ema"]["averages"], resumed["ema"]["averages"], strict=True):
        torch.testing.assert_close(a, b)
