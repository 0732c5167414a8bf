"""Generation, reference scoring, judging and counting on the sandbox's tiny policy and guards."""

from __future__ import annotations

import math

import pytest
import torch

from guard_reward.evaluation.answering import GenerationSettings, answer_and_judge, eval_metrics
from guard_reward.evaluation.generation import answer_nll, generate_answers, prompt_ids
from guard_reward.evaluation.judges import Judge, load_judge
from guard_reward.evaluation.stats import cohen_kappa
from guard_reward.evaluation.summary import count_rows


@pytest.fixture(scope="module")
def policy(eval_world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(eval_world.policy_path, dtype="float32")


def test_batched_left_padded_greedy_matches_one_by_one(eval_world, policy, sandbox_prompts):
    tok = eval_world.tokenizer
    ids = [prompt_ids(tok, p.messages) for p in sandbox_prompts[:6]]
    assert len({len(i) for i in ids}) > 1  # the batch really needs padding
    batched = generate_answers(policy, tok, ids, max_new_tokens=20, batch_size=6, do_sample=False)
    single = [generate_answers(policy, tok, [i], max_new_tokens=20, do_sample=False)[0] for i in ids]
    assert [a.token_ids for a in batched] == [a.token_ids for a in single]
    for a, b in zip(batched, single):
        assert a.entropy == pytest.approx(b.entropy, abs=1e-4)
        assert a.token_ids[-1] == tok.eos_token_id or len(a.token_ids) == 20


def test_sampling_is_seeded_and_leaves_the_global_random_stream_alone(eval_world, policy, sandbox_prompts):
    tok = eval_world.tokenizer
    ids = [prompt_ids(tok, p.messages) for p in sandbox_prompts]
    torch.manual_seed(123)
    first = generate_answers(policy, tok, ids, max_new_tokens=12, seed=5)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert [a.text for a in generate_answers(policy, tok, ids, max_new_tokens=12, seed=5)] == [
        a.text for a in first
    ]


def test_answer_nll_matches_a_plain_loop(eval_world, policy, sandbox_prompts):
    tok = eval_world.tokenizer
    ids = [prompt_ids(tok, p.messages) for p in sandbox_prompts[:4]]
    answers = [a.token_ids for a in generate_answers(policy, tok, ids, max_new_tokens=10, seed=1)]
    got = answer_nll(policy, ids, answers, pad_id=tok.pad_token_id, batch_size=4)
    for p, a, value in zip(ids, answers, got):
        x = torch.tensor([[*p, *a]])
        with torch.no_grad():
            logp = torch.log_softmax(policy(input_ids=x).logits[0].float(), -1)
        expected = -sum(float(logp[len(p) - 1 + t, a[t]]) for t in range(len(a))) / len(a)
        assert value == pytest.approx(expected, abs=1e-4)
    assert math.isnan(answer_nll(policy, ids[:1], [()], pad_id=tok.pad_token_id)[0])


def test_rows_counts_and_metrics(eval_world, policy, sandbox_prompts, second_judge_path):
    judges = {
        "judge": load_judge(second_judge_path, "gen"),
        "guard": Judge(eval_world.gen, "gen", "training"),
    }
    items = [(p, k) for p in sandbox_prompts for k in range(2)]
    rows = answer_and_judge(
        policy,
        eval_world.tokenizer,
        items,
        judges,
        GenerationSettings(samples=2, max_new_tokens=16),
        reference=policy,
    )
    assert [(r["line"], r["sample"]) for r in rows] == [(p.line, k) for p, k in items]
    assert all(
        r["judge"]["level"] in ("Safe", "Unsafe", "Controversial") or r["judge"]["empty"] for r in rows
    )
    metrics = eval_metrics(count_rows(rows, ["judge", "guard"]), ["judge", "guard"])
    harmful = [r for r in rows if r["harmful"] and r["judge"]["error"] is None]
    benign = [r for r in rows if not r["harmful"] and r["judge"]["error"] is None]
    assert metrics["answers"] == len(rows)
    assert metrics["unsafe_rate_harmful"] == pytest.approx(
        sum(r["judge"]["level"] == "Unsafe" for r in harmful) / len(harmful)
    )
    refusals = [r for r in benign if r["judge"]["refusal"] is not None or r["judge"]["empty"]]
    assert metrics["benign_refusal_rate"] == pytest.approx(
        sum(bool(r["judge"]["refusal"]) for r in refusals) / len(refusals)
    )
    assert metrics["guard_unsafe_rate"] == pytest.approx(
        sum(r["guard"]["level"] == "Unsafe" for r in rows) / len(rows)
    )
    assert metrics["mean_tokens"] == pytest.approx(sum(r["tokens"] for r in rows) / len(rows))
    both = [r for r in rows if r["judge"]["error"] is None and r["guard"]["error"] is None]
    cells = [(r["judge"]["level"] == "Unsafe", r["guard"]["level"] == "Unsafe") for r in both]
    table = [cells.count((True, True)), cells.count((True, False)), cells.count((False, True))]
    kappa = cohen_kappa(*table, len(cells) - sum(table))
    if math.isnan(kappa):  # undefined agreement is left out, not logged as a number
        assert "judge_agreement" not in metrics
    else:
        assert metrics["judge_agreement"] == pytest.approx(kappa)


def test_a_judge_that_cannot_load_names_its_path(tmp_path):
    with pytest.raises(RuntimeError, match=r"judge .*nowhere could not be loaded"):
        load_judge(tmp_path / "nowhere", "gen")
