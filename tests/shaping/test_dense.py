"""Dense shaping functions against plain Python loops, plus hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from guard_reward.shaping import dense


def _batch(seed: int = 0, b: int = 6, t: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    risk = torch.rand(b, t, generator=g)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = t  # one full row
    lengths[1] = 0  # one empty row
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return risk, mask


def _loop_first_violation(risk, mask):
    out = torch.zeros_like(risk)
    for i in range(risk.shape[0]):
        c_prev = 0.0
        for t in range(risk.shape[1]):
            if not mask[i, t]:
                continue
            c = max(c_prev, float(risk[i, t]))
            out[i, t] = -(c - c_prev)
            c_prev = c
    return out


def _loop_rtg(d, mask):
    out = torch.zeros_like(d)
    for i in range(d.shape[0]):
        acc = 0.0
        for t in reversed(range(d.shape[1])):
            if mask[i, t]:
                acc += float(d[i, t])
                out[i, t] = acc
    return out


def _loop_group_norm(d, mask, g, eps=1e-4):
    out = torch.zeros_like(d)
    for start in range(0, d.shape[0], g):
        vals = [float(d[i, t]) for i in range(start, start + g) for t in range(d.shape[1]) if mask[i, t]]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        for i in range(start, start + g):
            for t in range(d.shape[1]):
                if mask[i, t]:
                    out[i, t] = (float(d[i, t]) - mean) / (std + eps)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_violation_matches_loop_and_telescopes(seed):
    risk, mask = _batch(seed)
    got = dense.first_violation(risk, mask)
    torch.testing.assert_close(got, _loop_first_violation(risk, mask))
    # the sum over a response is minus its worst risk (potential-based shaping telescopes)
    for i in range(risk.shape[0]):
        worst = max([float(r) for r, m in zip(risk[i], mask[i], strict=True) if m], default=0.0)
        assert float(got[i].sum()) == pytest.approx(-worst, abs=1e-6)


def test_first_violation_hand_case():
    risk = torch.tensor([[0.1, 0.05, 0.9, 0.3, 0.95, 0.7]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    got = dense.first_violation(risk, mask)
    expected = torch.tensor([[-0.1, 0.0, -0.8, 0.0, -0.05, 0.0]])
    torch.testing.assert_close(got, expected)


def test_first_violation_hard_places_one_penalty():
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True] * 5])
    flags = torch.tensor([2, -1, 4])
    got = dense.first_violation_hard(flags, mask, value=1.5)
    expected = torch.zeros(3, 5)
    expected[0, 2] = -1.5
    expected[2, 4] = -1.5
    torch.testing.assert_close(got, expected)


def test_first_violation_hard_rejects_flag_on_padding():
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="padded position"):
        dense.first_violation_hard(torch.tensor([2]), mask)
    with pytest.raises(ValueError, match="padded position"):
        dense.first_violation_hard(torch.tensor([7]), mask)


@pytest.mark.parametrize("seed", [0, 4])
def test_prob_and_threshold_match_loop(seed):
    risk, mask = _batch(seed)
    prob = dense.prob_penalty(risk, mask)
    hinge = dense.threshold_penalty(risk, mask, 0.6)
    for i in range(risk.shape[0]):
        for t in range(risk.shape[1]):
            r = float(risk[i, t])
            expected_prob = -r if mask[i, t] else 0.0
            expected_hinge = -max(0.0, r - 0.6) if mask[i, t] else 0.0
            assert float(prob[i, t]) == pytest.approx(expected_prob)
            assert float(hinge[i, t]) == pytest.approx(expected_hinge, abs=1e-6)


def test_unsafe_risk_policies():
    pu = torch.tensor([[0.2, 0.5]])
    pc = torch.tensor([[0.4, 0.1]])
    torch.testing.assert_close(dense.unsafe_risk(pu, pc, "strict"), torch.tensor([[0.6, 0.6]]))
    torch.testing.assert_close(dense.unsafe_risk(pu, pc, "loose"), pu)
    torch.testing.assert_close(dense.unsafe_risk(pu, pc, 0.5), torch.tensor([[0.4, 0.55]]))
    with pytest.raises(ValueError, match="strict"):
        dense.unsafe_risk(pu, pc, "lenient")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dense.unsafe_risk(pu, pc, 1.5)


def test_shape_dense_coef_and_clip():
    risk = torch.tensor([[0.0, 0.9, 0.95]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    got = dense.shape_dense(risk, mask, "first_violation", coef=2.0, clip=1.0)
    torch.testing.assert_close(got, torch.tensor([[0.0, -1.0, -0.1]]))
    got = dense.shape_dense(risk, mask, "prob", coef=0.5)
    torch.testing.assert_close(got, torch.tensor([[0.0, -0.45, -0.475]]))
    with pytest.raises(ValueError, match="first_violation, prob, threshold"):
        dense.shape_dense(risk, mask, "cumulative")


@pytest.mark.parametrize("seed", [0, 5])
def test_return_to_go_matches_loop(seed):
    d, mask = _batch(seed)
    torch.testing.assert_close(dense.return_to_go(-d, mask), _loop_rtg(-d, mask))


def test_group_token_normalize_matches_loop():
    d, mask = _batch(6, b=6)
    got = dense.group_token_normalize(-d, mask, 3)
    torch.testing.assert_close(got, _loop_group_norm(-d, mask, 3), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="groups of 4"):
        dense.group_token_normalize(d, mask, 4)


@pytest.mark.parametrize("mode", ["token", "return_to_go", "process_supervision"])
def test_dense_advantages_match_loop(mode):
    d, mask = _batch(7, b=6)
    d = -d
    seq = torch.tensor([0.5, -1.0, 1.2, 0.0, -0.3, 0.8])
    got = dense.dense_advantages(seq, d, mask, coef=0.7, mode=mode, group_size=3)
    if mode == "token":
        f = d * mask
    elif mode == "return_to_go":
        f = _loop_rtg(d, mask)
    else:
        f = _loop_rtg(_loop_group_norm(d, mask, 3), mask)
    for i in range(6):
        for t in range(d.shape[1]):
            expected = float(seq[i]) + 0.7 * float(f[i, t]) if mask[i, t] else 0.0
            assert float(got[i, t]) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_dense_advantages_zero_coef_is_sequence_advantage():
    d, mask = _batch(8)
    seq = torch.linspace(-1, 1, d.shape[0])
    got = dense.dense_advantages(seq, d, mask, coef=0.0, mode="return_to_go")
    torch.testing.assert_close(got, seq[:, None].expand_as(d) * mask)


def test_process_supervision_length_bias():
    # one violating response and two safe ones of different lengths: after mean subtraction every safe token
    # is worth a little, so the longer safe answer collects a larger advantage at its first token.
    d = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    adv = dense.dense_advantages(torch.zeros(3), d, mask, coef=1.0, mode="process_supervision", group_size=3)
    assert adv[2, 0] > adv[1, 0] > 0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        dense.first_violation(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask shape"):
        dense.prob_penalty(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="process_supervision"):
        ones = torch.ones(2, 3, dtype=torch.bool)
        dense.dense_advantages(torch.zeros(2), torch.zeros(2, 3), ones, coef=1.0, mode="process_supervision")


def test_coef_and_dense_advantage_checks():
    assert dense.check_coef("dense_coef", 0) == 0.0 and dense.check_coef("dense_coef", 0.5) == 0.5
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="dense_coef"):
            dense.check_coef("dense_coef", bad)
    assert [dense.check_dense_advantage(m) for m in dense.DENSE_ADVANTAGES] == list(dense.DENSE_ADVANTAGES)
    with pytest.raises(ValueError, match=r"dense_advantage='gae'.*token, return_to_go, process_supervision"):
        dense.check_dense_advantage("gae")
    with pytest.raises(ValueError, match="dense_advantage='gae'"):
        dense.dense_advantages(torch.zeros(1), torch.zeros(1, 2), torch.ones(1, 2), coef=1.0, mode="gae")
