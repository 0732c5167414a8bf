"""OpenRLHF 0.11's own reward client against the served guard's ``/get_reward``.

openrlhf==0.11.2 is installed once, without its dependencies (``pip install --no-deps --target
.venv-openrlhf011``; skipped with pip's reason when no package index is reachable). Importing ``openrlhf.utils``
would run its ``__init__`` (``get_strategy``: deepspeed, flash-attn, CUDA), so only the two files the reward
client lives in are loaded: ``openrlhf/utils/agent.py`` (``SingleTurnAgentExecutor``: query building, the
aiohttp POST with 5 tries 1 s apart) and the ``logging_utils.py`` it imports, under stand-in ``openrlhf`` and
``openrlhf.utils`` package modules. Its dependency, aiohttp, is already in ``.venv`` (Ray Serve's).

``SingleTurnAgentExecutor.execute`` runs as in OpenRLHF's rollout actors, with a fake vLLM engine that "generates"
fixed token ids and the real Qwen3 tokenizer and chat template: the executor decodes prompt + response with
special tokens and POSTs one sample per request.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from guard_reward.serving.get_reward import EXTRA_LOGS

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
OPENRLHF = "0.11.2"
TARGET = ROOT / ".venv-openrlhf011"
REWARD_FILE = ROOT / "integrations" / "openrlhf" / "reward_func.py"
TEMPLATE = ROOT / "tests" / "fixtures" / "chat_templates" / "qwen3.jinja"
CONFIG = {
    "guard_mode": "soft",
    "refusal": False,
}  # the serving tests' reward config (tests/serving/conftest.py)


def openrlhf_env() -> Path:
    """The folder holding openrlhf 0.11.2 (installed on first use; reused while its dist-info is there)."""
    if (TARGET / f"openrlhf-{OPENRLHF}.dist-info").is_dir():
        return TARGET
    partial = TARGET.with_name(TARGET.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(partial), f"openrlhf=={OPENRLHF}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(
            f"could not install openrlhf=={OPENRLHF} into {TARGET} (no package index?): {done.stderr[-500:]}"
        )
    shutil.rmtree(TARGET, ignore_errors=True)
    partial.rename(TARGET)
    return TARGET


@pytest.fixture(scope="module")
def agent_module():
    """``openrlhf.utils.agent`` loaded from the installed files, without running the packages' ``__init__``."""
    target = openrlhf_env()
    names = ("openrlhf", "openrlhf.utils", "openrlhf.utils.logging_utils", "openrlhf.utils.agent")
    saved = {name: sys.modules.pop(name, None) for name in names}
    for name, folder in (("openrlhf", "openrlhf"), ("openrlhf.utils", "openrlhf/utils")):
        package = types.ModuleType(name)
        package.__path__ = [str(target / folder)]
        sys.modules[name] = package
    try:
        module = importlib.import_module("openrlhf.utils.agent")
        assert module.__file__.startswith(str(target))
        yield module
    finally:
        for name in names:
            sys.modules.pop(name, None)
            if saved[name] is not None:
                sys.modules[name] = saved[name]


class FakeEngine:
    """Stands in for OpenRLHF's vLLM engine actor: returns the response ids registered for a prompt's ids."""

    def __init__(self) -> None:
        self.responses: dict[tuple[int, ...], list[int]] = {}

    def add(self, prompt_ids: list[int], response_ids: list[int]) -> None:
        self.responses[tuple(prompt_ids)] = response_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        ids = self.responses[tuple(prompt_token_ids)]
        return SimpleNamespace(
            outputs=[SimpleNamespace(token_ids=list(ids), finish_reason="stop", logprobs=None)]
        )


def samples(tok, n_copies: int = 1):
    """(prompt text, response text, prompt messages, completion) for an answer, an empty answer, a reasoning
    answer and a tool call; every prompt distinct (the fake engine answers by prompt)."""
    call = {"type": "function", "function": {"name": "oven", "arguments": {"temp": 220}}}
    responses = [
        ("Mix flour and water.<|im_end|>", "Mix flour and water."),
        ("<|im_end|>", ""),
        ("<think>\nEasy.\n</think>\n\nKnead it.<|im_end|>", "<think>\nEasy.\n</think>\n\nKnead it."),
        (
            '<tool_call>\n{"name": "oven", "arguments": {"temp": 220}}\n</tool_call><|im_end|>',
            [{"role": "assistant", "content": "", "tool_calls": [call]}],
        ),
    ]
    out = []
    for k in range(n_copies):
        for j, (response, completion) in enumerate(responses):
            user = [{"role": "user", "content": f"How do I bake bread number {k}.{j}?"}]
            prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            out.append((prompt, response, user, completion))
    return out


def run_executor(agent_module, remote: str, tok, rows) -> list[dict]:
    """Every row through ``SingleTurnAgentExecutor(remote_rm_url=remote).execute``, all at once (as a rollout
    actor's concurrent samples)."""
    engine = FakeEngine()
    for prompt, response, _, _ in rows:
        engine.add(
            tok(prompt, add_special_tokens=False)["input_ids"],
            tok(response, add_special_tokens=False)["input_ids"],
        )
    executor = agent_module.SingleTurnAgentExecutor(remote_rm_url=remote)
    params = SimpleNamespace(max_tokens=64, logprobs=None)

    async def all_at_once():
        return await asyncio.gather(*(executor.execute(p, None, params, 1024, tok, engine) for p, *_ in rows))

    return asyncio.run(all_at_once())


@pytest.fixture(scope="module")
def tok():
    from guard_reward.tiny.tokenizer import qwen_tokenizer

    return qwen_tokenizer(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def local_reward(server):
    from guard_reward.guards.gen import GenGuard
    from guard_reward.rewards.safety import SafetyReward

    guard = GenGuard.from_pretrained(server.gen_path, device="cpu", dtype="float32")
    return SafetyReward(guard, mode="soft", refusal=False, failure_value=0.0)


def first(value) -> float:
    """One sample's value: a JSON list of one (HTTP) or a ``(1,)`` tensor (the reward file), as OpenRLHF's
    ``_process_response_into_experience`` reads it."""
    if isinstance(value, list):
        assert len(value) == 1 and isinstance(value[0], float), value
        return value[0]
    assert value.shape == (1,) and value.dtype.is_floating_point, value
    return value.flatten()[0].item()


def check(outputs, rows, local_reward) -> None:
    missing = [i for i, out in enumerate(outputs) if out["reward"] is None]
    assert not missing, f"{len(missing)} of {len(outputs)} samples got no reward (OpenRLHF gave up on them)"
    rewards = [first(out["reward"]) for out in outputs]
    assert [first(out["scores"]) for out in outputs] == rewards
    want = local_reward(prompts=[r[2] for r in rows], completions=[r[3] for r in rows])
    assert rewards == pytest.approx(want, abs=1e-5)
    logs = [{key: first(v) for key, v in out["extra_logs"].items()} for out in outputs]
    assert all(set(x) == set(EXTRA_LOGS) for x in logs)
    # a turn that only calls a tool is judged by its call, never as an empty answer
    assert [x["empty"] for x in logs] == [0.0, 1.0, 0.0, 0.0] * (len(rows) // 4)
    assert [x["judged"] for x in logs] == [1.0, 0.0, 1.0, 1.0] * (len(rows) // 4)
    assert [x["guard_failed"] for x in logs] == [0.0] * len(rows)
    assert [x["tool_calls"] for x in logs] == [0.0, 0.0, 0.0, 1.0] * (len(rows) // 4)


@pytest.fixture(params=["http", "file"])
def remote(request, server, monkeypatch, tmp_path):
    """What ``--reward.remote_url`` is given: the service's URL, or our reward file (which calls the service with
    ``RemoteGenGuard``, honouring ``Retry-After``); a function from the URL of an application."""
    if request.param == "http":
        return lambda url: f"{url}/get_reward"
    config = tmp_path / "reward.yaml"
    config.write_text("".join(f"{k}: {str(v).lower()}\n" for k, v in CONFIG.items()))
    monkeypatch.setenv("GUARD_REWARD_CONFIG", str(config))

    def file_for(url: str) -> str:
        monkeypatch.setenv("GUARD_REWARD_URL", url)  # read when OpenRLHF's executor first calls the file
        return str(REWARD_FILE)

    return file_for


def test_openrlhf_single_turn_executor_gets_a_float_reward_for_every_sample(
    agent_module, server, tok, local_reward, remote
):
    rows = samples(tok)
    check(run_executor(agent_module, remote(server.url), tok, rows), rows, local_reward)


def test_a_burst_larger_than_the_queue_limit_gets_every_reward(
    agent_module, server, tok, local_reward, remote
):
    """A second application whose Gen deployment merges 2 requests per call and lets 2 more wait; OpenRLHF sends
    24 requests at once and, over HTTP, gives up on a sample after 5 tries 1 s apart (ignoring Retry-After), so
    the service must queue them rather than refuse them."""
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build

    options = ServeOptions(
        gen=server.gen_path, cpus_per_replica=0.25, max_batch_size=2, max_queued_requests=2,
        device="cpu", dtype="float32", torch_threads=1, reward_config=CONFIG,
    )  # fmt: skip
    serve.run(build(options), name="openrlhf_burst", route_prefix="/openrlhf_burst")
    try:
        rows = samples(tok, n_copies=6)
        assert len(rows) > options.max_queued_requests + options.max_batch_size
        start = time.perf_counter()
        outputs = run_executor(agent_module, remote(f"{server.url}/openrlhf_burst"), tok, rows)
        logger.info(
            "a burst of %d OpenRLHF samples answered in %.1f s", len(rows), time.perf_counter() - start
        )
        check(outputs, rows, local_reward)
    finally:
        serve.delete("openrlhf_burst")


def test_a_gen_replica_killed_mid_burst_never_costs_openrlhf_a_reward(
    agent_module, server, tok, local_reward
):
    """Two Gen replicas, one killed (``ray.kill``, as a node failure) once the burst's first batch has run:
    OpenRLHF's own client (HTTP, 5 tries 1 s apart) gets a float reward for every sample, equal to the local
    guard's; the ingress retries the lost replica's batch on the survivor or after Serve's restart."""
    import ray
    from ray import serve

    from guard_reward.serving.app import ServeOptions, build, wait_healthy
    from tests.serving.test_service import _replica_actors, batch_sizes

    options = ServeOptions(
        gen=server.gen_path, replicas=2, cpus_per_replica=0.25, max_batch_size=4, batch_wait_ms=50,
        device="cpu", dtype="float32", torch_threads=1, reward_config=CONFIG,
    )  # fmt: skip
    serve.run(build(options), name="openrlhf_fault", route_prefix="/openrlhf_fault")
    url = f"{server.url}/openrlhf_fault"
    try:
        wait_healthy(url, timeout=120)
        rows = samples(tok, n_copies=12)
        killed: list[str] = []

        def kill_once_a_batch_ran() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not batch_sizes(SimpleNamespace(url=url), "gen"):
                time.sleep(0.05)
            replicas = _replica_actors("SERVE_REPLICA::openrlhf_fault#GenGuard")
            ray.kill(replicas[0], no_restart=True)
            killed.append(str(replicas[0]))

        killer = threading.Thread(target=kill_once_a_batch_ran, daemon=True)
        killer.start()
        outputs = run_executor(agent_module, f"{url}/get_reward", tok, rows)
        killer.join(60)
        assert killed, "no replica was killed"
        check(outputs, rows, local_reward)  # every sample has its reward: none is None
        wait_healthy(url, timeout=120)  # Serve has put a replica back
    finally:
        serve.delete("openrlhf_fault")
