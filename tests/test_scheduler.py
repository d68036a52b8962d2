"""The engine loop (service/scheduler.py) on a real tiny engine: generations join a running decode and
leave when done, with the same text as alone; scoring runs between decode steps; a cancelled request
frees its row (a waiting one never starts); a full queue answers 503; a failing job fails alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import build_tiny_stack

from models.generation import SamplingParams
from service.engine import GenerateJob, ScoreJob, TorchEngine, UserInput
from service.errors import EngineOverloaded, EngineUnavailable
from service.scheduler import EngineLoop


@pytest.fixture(scope="module")
def engine(tmp_path_factory, real_backbone_dir) -> TorchEngine:  # noqa: F811
    root = tmp_path_factory.mktemp("sched")
    backbone, ckpt = build_tiny_stack(
        root, real_backbone_dir, cross_attn_layers=(1,), max_position_embeddings=256
    )
    return TorchEngine.load(ckpt, backbone, device="cpu")


def user(engine: TorchEngine, seed: int) -> UserInput:
    return UserInput(np.random.default_rng(seed).standard_normal(engine.user_token_shape).astype(np.float16))


def job(engine: TorchEngine, text: str, n: int, who: UserInput | None = None) -> GenerateJob:
    params = SamplingParams(max_new_tokens=n, repetition_penalty=1.1)
    return GenerateJob(who or UserInput(None), engine.chat_prompt(text), params)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.fixture
async def runner(engine):
    loop = EngineLoop(engine, max_batch=4, max_wait_ms=5, max_queue=8)
    loop.start()
    yield loop
    await loop.stop()


async def test_a_generation_joins_a_running_decode_and_leaves_when_done(runner, engine) -> None:
    pieces: list[str] = []
    long = job(engine, "Tell me about a film you like.", 60, user(engine, 0))
    long.on_text = pieces.append
    short = job(engine, "Hi", 8)  # a cold-start row beside a personalized one
    running = asyncio.create_task(runner.generate(long))
    await until(lambda: runner.steps >= 3)
    short_result = await runner.generate(short)
    assert not running.done()  # the short request was answered while the long one still decodes
    long_result = await running
    assert runner.most_rows == 2 and runner.running == 0
    alone = engine.generate_batch([job(engine, "Tell me about a film you like.", 60, user(engine, 0)),
                                   job(engine, "Hi", 8)])  # fmt: skip
    assert (long_result, short_result) == tuple(alone)
    assert long_result.completion_tokens == 60 and "".join(pieces).strip() == long_result.text


async def test_scoring_runs_between_decode_steps(runner, engine) -> None:
    running = asyncio.create_task(runner.generate(job(engine, "Tell me a long story.", 120, user(engine, 1))))
    await until(lambda: runner.steps >= 2)
    scored = await runner.score(ScoreJob(user(engine, 2), k=5))
    assert not running.done()
    assert scored == engine.score_batch([ScoreJob(user(engine, 2), k=5)])[0]
    await running


async def test_a_cancelled_request_leaves_and_a_waiting_one_never_starts(engine) -> None:
    runner = EngineLoop(engine, max_batch=1, max_wait_ms=0, max_queue=8)
    runner.start()
    try:
        first = asyncio.create_task(runner.generate(job(engine, "Tell me a long story.", 120)))
        await until(lambda: runner.steps >= 2)
        waiting = asyncio.create_task(runner.generate(job(engine, "Hello", 5)))  # no free row: waits
        await asyncio.sleep(0.02)
        waiting.cancel()
        first.cancel()
        await until(lambda: runner.running == 0)
        steps = runner.steps
        await asyncio.sleep(0.05)
        assert runner.steps == steps and steps < 120 and runner.admitted == 1
        assert (await runner.generate(job(engine, "Hi", 3))).completion_tokens == 3
        assert runner.admitted == 2
    finally:
        await runner.stop()


async def test_a_full_queue_is_refused_and_a_stopped_loop_is_unavailable(engine) -> None:
    runner = EngineLoop(engine, max_batch=1, max_wait_ms=0, max_queue=2)
    runner.start()
    running = asyncio.create_task(runner.generate(job(engine, "Tell me a long story.", 120)))
    await until(lambda: runner.running == 1)
    queued = [asyncio.create_task(runner.generate(job(engine, "Hi", 2))) for _ in range(2)]
    await until(lambda: runner.queued() == 2)
    with pytest.raises(EngineOverloaded) as err:
        await runner.generate(job(engine, "Hi", 2))
    assert err.value.status_code == 503
    await asyncio.gather(running, *queued)
    await runner.stop()
    with pytest.raises(EngineUnavailable):
        await runner.score(ScoreJob(UserInput(None), k=1))


async def test_a_failing_job_fails_alone_and_the_loop_lives_on(runner, engine) -> None:
    bad = UserInput(np.zeros((3, 5), dtype=np.float16))  # user tokens of another shape
    with pytest.raises(RuntimeError):
        await runner.score(ScoreJob(bad, k=1))
    assert len((await runner.score(ScoreJob(user(engine, 3), k=2))).items) == 2
    assert (await runner.generate(job(engine, "Hi", 2))).completion_tokens == 2
