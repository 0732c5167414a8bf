"""Shared-prefix KV reuse: the plan against hand-built rows, the encoded levels against plain per-row forwards,
and GenGuard with sharing on against sharing off (probabilities within 1e-5 in float32, same decoded text)."""

import itertools
import random

import pytest
import torch

from guard_reward.guards.batching import ordered_budget_batches
from guard_reward.guards.gen import GenGuard
from guard_reward.guards.prefix_sharing import (
    encode_shared,
    plan_sharing,
    run_rows,
    sharing_order,
)
from tests.guards import stream_ckpt

H = [1, 2, 3, 4, 5]  # a header every row starts with
P1 = list(range(100, 120))  # two prompts of 20 tokens, differing from their first token
P2 = list(range(200, 220))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small forwards: on a busy shared machine, multi-threaded kernels wait on cores (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_plan_levels_by_hand():
    rows = [H + P1 + [7, 8], H + P1 + [9], H + P2 + [7], H + P2 + [8, 8, 8], [*H, 50, 51]]
    plan = plan_sharing(rows, min_group_tokens=16)
    assert plan.shared == 5
    assert sorted(n for _, n in plan.groups) == [20, 20]
    g = plan.row_group
    assert g[0] == g[1] != g[2] == g[3] and g[4] == -1
    assert plan.cut == (25, 25, 25, 25, 5)
    # 5 header tokens once; 3 level-1 rows (two groups + the empty row) of width 20; 5 rows of width 3
    assert plan.tokens_shared == 5 + 3 * 20 + 5 * 3
    assert plan.tokens_unshared == 5 * 28


def test_plan_keeps_one_own_token_and_skips_what_is_not_shared():
    assert plan_sharing([[*H, 6], [*H, 6, 7]]).cut == (5, 5)  # a row that prefixes another keeps one token
    assert plan_sharing([[1, 2], [3, 4]]) is None
    assert plan_sharing([[*H, 6]]) is None
    # a short coincidental overlap (below min_group_tokens) makes no group
    plan = plan_sharing([[*H, 9, 9, 1], [*H, 9, 9, 2], [*H, 8]], min_group_tokens=3)
    assert plan.groups == () and plan.cut == (5, 5, 5)


def test_a_row_that_would_shrink_a_large_group_starts_its_own():
    long_prompt = list(range(300, 360))
    rows = [H + long_prompt + [k] for k in range(4)] + [H + long_prompt[:20] + [999]]
    plan = plan_sharing(rows, min_group_tokens=16)
    assert plan.shared == 25  # all five share the header and the prompt's first 20 tokens
    assert [n for _, n in plan.groups] == [40]  # the other 40 stay shared by the four
    assert plan.row_group[4] == -1


def test_plan_declines_what_does_not_pay():
    # the padded-token gain is below 1.2x: a 5-token header over rows of 60 own tokens
    assert plan_sharing([H + list(range(1000 + 60 * k, 1060 + 60 * k)) for k in range(3)]) is None
    # the gain passes (a 16-row group shares a 200-token prompt) but one row's long own part would make every
    # row's cache 5 + 200 + 150 columns wide against 215 for the longest row: more memory than the budget
    # allows, so no sharing
    prompt = list(range(2000, 2200))
    rows = [[*H, *prompt, 3000 + k, *range(9)] for k in range(16)] + [H + list(range(5000, 5150))]
    assert plan_sharing(rows, max_width_growth=10.0) is not None
    assert plan_sharing(rows) is None


def test_sharing_order_keeps_groups_together_and_budget_batches_keep_order():
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 2000) for _ in range(rng.randint(20, 40))] for _ in range(4)]
    rows = [
        H + p + [rng.randrange(3000, 4000) for _ in range(rng.randint(1, 9))]
        for p in prompts
        for _ in range(5)
    ]
    rng.shuffle(rows)
    order = sharing_order(rows)
    assert sorted(order) == list(range(len(rows)))
    prompt_of = [next(k for k, p in enumerate(prompts) if r[5 : 5 + len(p)] == p) for r in rows]
    runs = [prompt_of[i] for i in order]
    assert sum(a != b for a, b in itertools.pairwise(runs)) == 3  # each prompt's rows are contiguous
    lengths = [len(r) for r in rows]
    batches = ordered_budget_batches(order, lengths, token_budget=200, max_batch_size=6)
    assert [i for b in batches for i in b] == order
    for b in batches:
        assert len(b) <= 6 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200)
    with pytest.raises(ValueError, match="token_budget"):
        ordered_budget_batches(order, lengths, token_budget=0, max_batch_size=6)


@pytest.fixture(scope="module")
def guard(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path, dtype="float32")


@pytest.fixture(scope="module")
def plain(tiny_gen_path):
    return GenGuard.from_pretrained(tiny_gen_path, dtype="float32", share_prefix=False)


def test_encoded_levels_then_own_tokens_equal_plain_forwards(guard):
    """Run the shared levels, then every row's own tokens (right-padded, causal) on the expanded cache; each
    row's hidden states (own and shared, gathered) must equal a plain forward over that row alone."""
    rng = random.Random(1)
    header = [rng.randrange(1000, 5000) for _ in range(30)]
    prompt = [rng.randrange(1000, 5000) for _ in range(25)]
    rows = [
        header + prompt + [rng.randrange(1000, 5000) for _ in range(rng.randint(2, 12))] for _ in range(3)
    ]
    rows += [header + [rng.randrange(1000, 5000) for _ in range(rng.randint(2, 30))] for _ in range(2)]
    backbone = guard.model.model
    plan = plan_sharing(rows)
    assert plan.shared == 30 and len(plan.groups) == 1
    with torch.inference_mode():
        past = encode_shared(backbone, rows, plan, guard.pad_id, keep_hidden=True)
        own = [r[c:] for r, c in zip(rows, plan.cut)]
        hidden = run_rows(backbone, past.cache, own, past.key_mask, past.length, guard.pad_id)
        for b, (row, o, cut) in enumerate(zip(rows, own, plan.cut)):
            ref = backbone(input_ids=torch.tensor([row])).last_hidden_state[0]
            torch.testing.assert_close(hidden[b, : len(o)], ref[cut:], atol=1e-5, rtol=1e-4)
            assert past.ids[b, past.key_mask[b]].tolist() == row[:cut]
            # every position, shared or own, through gather
            got = past.gather(plan.cut, hidden, torch.full((len(row),), b), torch.arange(len(row)))
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def grpo_batch(seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    words = [
        "river",
        "stone",
        "light",
        "garden",
        "bread",
        "window",
        "city",
        "road",
        "music",
        "paper",
        "green",
        "small",
        "table",
        "market",
    ]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    convs = []
    for _ in range(3):  # three prompts, four completions each
        prompt = text(rng.randint(12, 30))
        convs += [
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": text(rng.randint(3, 40))}]
            for _ in range(4)
        ]
    convs += [[{"role": "user", "content": text(rng.randint(3, 40))}] for _ in range(3)]  # prompt-only
    convs.append(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": text(9)},
            {"role": "assistant", "content": "<think>" + text(8) + "</think>" + text(5)},
        ]
    )
    return convs


def max_prob_gap(a, b) -> float:
    return max(abs(x.probs[k] - y.probs[k]) for x, y in zip(a, b, strict=True) for k in x.probs)


@pytest.mark.parametrize("token_budget", [16384, 1500])
def test_gen_probabilities_unchanged_with_sharing(guard, plain, token_budget):
    convs = grpo_batch()
    guard.token_budget = plain.token_budget = token_budget
    guard.stats.clear()
    try:
        shared, unshared = guard.moderate(convs), plain.moderate(convs)
    finally:
        guard.token_budget = plain.token_budget = 16384
    assert guard.stats["shared_batches"] >= 1 and guard.stats["tokens_saved"] > 0
    assert max_prob_gap(shared, unshared) < 1e-5
    assert [v.level for v in shared] == [v.level for v in unshared]


def test_gen_separate_thinking_and_eager_attention_unchanged(tiny_gen_path):
    convs = grpo_batch(seed=3)
    on = GenGuard.from_pretrained(tiny_gen_path, dtype="float32", attn_implementation="eager")
    off = GenGuard.from_pretrained(
        tiny_gen_path, dtype="float32", attn_implementation="eager", share_prefix=False
    )
    a, b = on.moderate(convs, thinking="separate"), off.moderate(convs, thinking="separate")
    assert on.stats["shared_batches"] >= 1
    assert max_prob_gap(a, b) < 1e-5


def test_gen_decode_unchanged_with_sharing(guard, plain):
    convs = grpo_batch(seed=5)
    guard.stats.clear()
    a, b = guard.moderate(convs, decode=True), plain.moderate(convs, decode=True)
    assert guard.stats["shared_batches"] >= 1
    assert max_prob_gap(a, b) < 1e-5
    # random weights decode arbitrary tokens: the same 32 tokens per row means the same logits at each step
    assert [v.raw for v in a] == [v.raw for v in b]
    assert all(len(v.raw) > 0 for v in a)
    for x, y in zip(a, b):
        assert (x.p_refusal is None) == (y.p_refusal is None)
        if x.p_refusal is not None:
            assert abs(x.p_refusal - y.p_refusal) < 1e-5


def assert_same_risks(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.token_ids.tolist() == y.token_ids.tolist()
        assert torch.equal(x.offsets, y.offsets) and x.span == y.span
        for name in ("p_safe", "p_unsafe", "p_controversial", "category_probs"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), atol=1e-5, rtol=0)
        assert (x.query_probs is None) == (y.query_probs is None)
        if x.query_probs is not None:
            assert all(abs(x.query_probs[k] - y.query_probs[k]) < 1e-5 for k in x.query_probs)
            cats = x.query_category_probs
            assert all(abs(cats[k] - y.query_category_probs[k]) < 1e-5 for k in cats)


@pytest.fixture(scope="module")
def streams():
    return stream_ckpt.guard("single"), stream_ckpt.guard("single", share_prefix=False)


def test_stream_scores_unchanged_with_sharing(streams):
    on, off = streams
    convs = grpo_batch(seed=7)
    # a group whose completions all open alike: the shared cache holds judged tokens too
    opening = "I cannot help with that request, but here is a safer idea for the garden and the river: "
    question = {"role": "user", "content": "What should I do with the old stones in my yard?"}
    convs += [[question, {"role": "assistant", "content": opening + t}] for t in ("bread.", "music", "a")]
    before = on.n_shared_batches
    for thinking in ("answer", "include"):
        assert_same_risks(on.score(convs, thinking=thinking), off.score(convs, thinking=thinking))
    assert on.n_shared_batches > before


def test_stream_score_ids_unchanged_with_sharing(streams):
    on, off = streams
    tok = on.tokenizer
    rng = random.Random(11)
    prompts, completions = [], []
    for p in range(2):
        prompt = [
            {
                "role": "user",
                "content": f"question {p}: " + " ".join(rng.choice("abcdefgh") for _ in range(40)),
            }
        ]
        for _ in range(4):
            text = " ".join(
                rng.choice(["stone", "light", "bread", "city"]) for _ in range(rng.randint(3, 30))
            )
            prompts.append(prompt)
            completions.append([*tok.encode(text, add_special_tokens=False), on.im_end_id])
    before = on.n_shared_batches
    assert_same_risks(on.score_ids(prompts, completions), off.score_ids(prompts, completions))
    assert on.n_shared_batches > before
