"""TRL's AsyncGRPOTrainer with a remote guard: the rewards run in TRL's spawned, CUDA-free rollout child and
reach the guard over HTTP; their ``guard/…`` metrics reach the trainer's logs through ``AsyncGRPOMetrics``.

Two local servers on 127.0.0.1 stand in for the heavy parts: a plain HTTP server running the real ``GenGuard``
on the tiny Gen checkpoint behind the ``/v1/gen/moderate`` route (the request parsing and judging functions the
service itself uses), and a fake vLLM around the policy model that answers ``/v1/completions`` with fixed
replies. Weight sync to vLLM is TRL's injectable no-op. Three GPU-only spots of TRL's are patched: the worker's "is
vLLM installed" (it talks to vLLM over HTTP only), the GPU peak-FLOPs lookup for the MFU metric, and the
flash-attn 3 kernel of the packed (tree) attention, replaced by the same maths in torch.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

pytest.importorskip("aiohttp", reason="TRL's async GRPO worker needs aiohttp")

EOS = 151645  # <|im_end|>
REPLIES = ["Sure, here is how to do it step by step.", "I can't help with that request."]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], **state) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Json(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def reply(self, payload: dict, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))


class GuardHandler(_Json):
    """The Gen route of the service, on one thread at a time (the guard is not thread-safe)."""

    def do_GET(self):
        self.reply({"status": "ok"})

    def do_POST(self):
        from guard_reward.serving.protocol import judge_gen_calls, parse_gen

        call = parse_gen(self.body())
        with self.server.lock:
            (verdicts,) = judge_gen_calls(self.server.guard, [call])
            self.server.judged += len(verdicts)
        self.reply({"verdicts": verdicts})


class VLLMHandler(_Json):
    """A fake vLLM server around the policy: fixed replies in turn, each ending with EOS."""

    def do_GET(self):
        if self.path.startswith("/v1/models"):
            self.reply({"data": [{"id": "policy", "max_model_len": 256}]})
        else:
            self.reply({"status": "ok"})

    def do_POST(self):
        body = self.body()
        with self.server.lock:
            text = REPLIES[self.server.calls % len(REPLIES)]
            self.server.calls += 1
        ids = [*self.server.tokenizer.encode(text, add_special_tokens=False)[: body["max_tokens"] - 1], EOS]
        self.reply({"choices": [{"token_ids": ids, "logprobs": {"token_logprobs": [-1.0] * len(ids)}}]})


class NoWeightSync:
    """TRL's weight-transfer protocol with nothing to send to (the fake vLLM has no weights)."""

    def __init__(self) -> None:
        self.sent = 0

    def init_weight_transfer(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def send_weights(self, iterator) -> None:
        self.sent += sum(1 for _ in iterator)

    def resume(self) -> None:
        pass

    def destroy(self) -> None:
        pass


def guard_safety(prompts, completions, log_metric=None, **kwargs):
    """A reward that logs one rate item per completion, as the guard rewards do."""
    for c in completions:
        log_metric("guard/unsafe_rate", float(c == "bad"))
    return [0.0 for _ in completions]


def varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=True, **kwargs):
    """flash-attn's ``flash_attn_varlen_func`` on the CPU, for the trainer's packed (tree) attention: per segment,
    causal attention aligned bottom-right (query ``i`` of ``Lq`` sees keys ``j <= i + Lk - Lq``), grouped heads.
    ``q`` ``(total_q, H, D)``, ``k``/``v`` ``(total_k, H_kv, D)``; returns ``(total_q, H, D)``."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    for i in range(len(cu_q) - 1):
        a, b, c, d = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        qs = q[a:b].transpose(0, 1)
        ks, vs = (x[c:d].repeat_interleave(rep, dim=1).transpose(0, 1) for x in (k, v))
        mask = torch.ones(b - a, d - c, dtype=torch.bool).tril(diagonal=(d - c) - (b - a))
        attn = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=softmax_scale)
        out[a:b] = attn.transpose(0, 1)
    return out


def _serve(server: _Server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_async_grpo_with_remote_guard_logs_guard_metrics(tmp_path, tiny_gen_path, monkeypatch):
    from trl.experimental.async_grpo import (
        AsyncGRPOConfig,
        AsyncGRPOTrainer,
        async_grpo_trainer,
        async_rollout_worker,
        packing,
    )

    from guard_reward import GenGuard, RemoteGenGuard, SafetyReward
    from guard_reward.integrations.trl.callbacks import AsyncGRPOMetrics
    from tests.tiny_policy import prompt_dataset, save_tiny_policy, tiny_policy

    monkeypatch.setattr(async_rollout_worker, "is_vllm_available", lambda *a, **k: True)
    # the trainer reads the GPU's peak FLOPs for its MFU metric with torch.cuda, which fails on a CPU torch
    monkeypatch.setattr(async_grpo_trainer, "get_peak_flops_per_device", lambda *a, **k: None)
    # its packed attention loads flash-attn 3 GPU kernels from the hub; the same maths in torch instead
    monkeypatch.setattr(
        packing, "_flash_attn", lambda: SimpleNamespace(flash_attn_varlen_func=varlen_attention)
    )
    from trl.chat_template_utils import qwen3_template

    _, tok = tiny_policy()
    tok.padding_side = "left"
    tok.response_template = qwen3_template  # the worker parses replies with it; the tiny ChatML one has none
    policy = str(save_tiny_policy(tmp_path / "policy"))  # the async trainer loads the policy from a path
    guard = _serve(
        _Server(GuardHandler, guard=GenGuard.from_pretrained(tiny_gen_path, device="cpu"), judged=0)
    )
    vllm = _serve(_Server(VLLMHandler, tokenizer=tok, calls=0))
    try:
        # the random tiny Gen cannot decode verdict lines: label probabilities, no refusal judgement
        safety = AsyncGRPOMetrics(SafetyReward(RemoteGenGuard(guard.url), mode="soft", refusal=False))
        args = AsyncGRPOConfig(
            output_dir=str(tmp_path / "run"), vllm_server_base_url=vllm.url, max_steps=2, logging_steps=1,
            per_device_train_batch_size=4, num_generations=2, max_completion_length=12, learning_rate=1e-3,
            report_to="none", use_cpu=True, bf16=False, save_strategy="no", token_budget=0,
            weight_sync_steps=1, max_staleness=1,
        )  # fmt: skip
        trainer = AsyncGRPOTrainer(
            policy, reward_funcs=[safety], args=args, train_dataset=prompt_dataset(4), processing_class=tok,
            weight_transfer=NoWeightSync(),
        )  # fmt: skip
        safety.connect(trainer)
        trainer.train()
    finally:
        guard.shutdown()
        vllm.shutdown()
    assert guard.judged > 0 and vllm.calls > 0, (
        "the child generated through vLLM and judged through the guard"
    )
    rows = [r for r in trainer.state.log_history if "guard/unsafe_rate" in r]
    for row in rows:
        assert 0.0 <= row["guard/unsafe_rate"] <= 1.0 and 0.0 < row["guard/p_unsafe_mean"] < 1.0
        assert row["guard/failures"] == 0.0
    # The worker keeps scoring while the last step trains, so the end-of-training summary row (which also drains
    # the queue) may carry guard metrics too; the training steps' rows must have them beside TRL's reward column.
    step_rows = [r for r in rows if "loss" in r]
    assert step_rows, f"no guard metric reached a training step's log: {trainer.state.log_history}"
    assert all(f"rewards/{safety.__name__}" in row for row in step_rows)


def test_async_metrics_wrapper_pickles_without_its_queue_and_forwards_metrics():
    """TRL pickles the rewards once to check them (no queue may travel then); called without ``log_metric``
    the wrapper sums each metric's values and counts into one ``(sum, count)`` pair per call."""
    import multiprocessing as mp
    import pickle
    from types import SimpleNamespace

    from guard_reward.integrations.trl.callbacks import AsyncGRPOMetrics

    wrapped = AsyncGRPOMetrics(guard_safety)
    assert wrapped.__name__ == "guard_safety"
    q = mp.get_context("spawn").Queue()
    wrapped.connect(SimpleNamespace(rollout_worker=SimpleNamespace(metrics_queue=q)))
    assert pickle.loads(pickle.dumps(wrapped))._queue is None
    assert wrapped(["p"] * 3, ["bad", "ok", "bad"]) == [0.0, 0.0, 0.0]
    assert q.get(timeout=10) == {"guard/unsafe_rate": (2.0, 3.0)}
    seen = []
    wrapped(["p"], ["bad"], log_metric=lambda k, v: seen.append((k, v)))  # GRPOTrainer's own log_metric wins
    assert seen == [("guard/unsafe_rate", 1.0)] and q.empty()
    with pytest.raises(ValueError, match="AsyncGRPOTrainer"):
        wrapped.connect(SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True)))
