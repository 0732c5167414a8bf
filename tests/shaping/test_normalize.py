"""Masked moments, whitening, row statistics and the two epsilon conventions against plain Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from guard_reward.shaping import normalize

LENGTHS = [5, 3, 0, 4]  # one empty row (e.g. a masked truncated completion)
T = 6
SHAPE = (len(LENGTHS), T)


def _mask(lengths=LENGTHS, t=T) -> torch.Tensor:
    return torch.tensor([[j < n for j in range(t)] for n in lengths])


def _rand(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _moments(values: list[float], ddof: int = 0) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / max(len(values) - ddof, 1)


def test_masked_whiten_and_moments():
    x, mask = _rand(8) * 3 + 2, _mask()
    mean, var = _moments([float(x[i, t]) for i, n in enumerate(LENGTHS) for t in range(n)])
    assert float(normalize.masked_mean(x, mask)) == pytest.approx(mean, rel=1e-5)
    assert float(normalize.masked_var(x, mask)) == pytest.approx(var, rel=1e-4)
    w = normalize.masked_whiten(x, mask)
    w_std = normalize.masked_whiten(x, mask, eps=1e-2, eps_on="std")
    for i, n in enumerate(LENGTHS):
        for t in range(T):
            want = (float(x[i, t]) - mean) / math.sqrt(var + 1e-8) if t < n else 0.0
            want_std = (float(x[i, t]) - mean) / (math.sqrt(var) + 1e-2) if t < n else 0.0
            assert float(w[i, t]) == pytest.approx(want, rel=1e-4, abs=1e-5)
            assert float(w_std[i, t]) == pytest.approx(want_std, rel=1e-4, abs=1e-5)


def test_reduce_hook_sees_partial_sums():
    # A reducer that doubles the partial sums must not change mean/var (two identical "processes").
    x, mask = _rand(9), _mask()
    doubled = normalize.masked_whiten(x, mask, reduce=lambda s: s * 2)
    torch.testing.assert_close(doubled, normalize.masked_whiten(x, mask))
    seen = []
    normalize.masked_moments(x, mask, reduce=lambda s: seen.append(s.clone()) or s)
    (stats,) = seen
    assert float(stats[2]) == sum(LENGTHS) and float(stats[0]) == pytest.approx(
        float(x[mask].sum()), rel=1e-5
    )


def test_empty_mask_gives_zero_moments():
    x = _rand(1)
    empty = torch.zeros_like(x, dtype=torch.bool)
    mean, var = normalize.masked_moments(x, empty)
    assert float(mean) == 0.0 and float(var) == 0.0
    assert torch.equal(normalize.masked_whiten(x, empty), torch.zeros_like(x))


@pytest.mark.parametrize("ddof", [0, 1])
def test_row_moments_match_loop_and_leave_out_missing_values(ddof):
    x = _rand(2, (3, 5))
    ok = torch.tensor([[True] * 5, [True, False, True, False, False], [False] * 5])
    x[~ok] = float("nan")  # a value left out must not reach any statistic
    centred, var = normalize.row_moments(x, ok, ddof)
    for r in range(3):
        values = [float(x[r, k]) for k in range(5) if ok[r, k]]
        mean, want_var = _moments(values, ddof) if values else (0.0, 0.0)
        assert float(var[r, 0]) == pytest.approx(want_var, rel=1e-5, abs=1e-7)
        for k in range(5):
            want = float(x[r, k]) - mean if ok[r, k] else 0.0
            assert float(centred[r, k]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_standardize_epsilon_places():
    centred, var = torch.tensor([[1.0, -2.0]]), torch.tensor([[4.0]])
    torch.testing.assert_close(normalize.standardize(centred, var, 1.0), torch.tensor([[1 / 3, -2 / 3]]))
    got = normalize.standardize(centred, var, 5.0, eps_on="var")
    torch.testing.assert_close(got, torch.tensor([[1 / 3, -2 / 3]]))
    zero = normalize.standardize(torch.zeros(1, 2), torch.zeros(1, 1), 1e-4)
    assert torch.equal(zero, torch.zeros(1, 2)), "a zero variance stays finite"
    with pytest.raises(ValueError, match="std, var"):
        normalize.standardize(centred, var, 1.0, eps_on="mean")


def test_row_mean_matches_loop_for_any_mask_dtype():
    x, mask = _rand(3), _mask()
    want = [sum(float(x[i, t]) for t in range(n)) / n if n else 0.0 for i, n in enumerate(LENGTHS)]
    for m in (mask, mask.long(), mask.float()):
        assert normalize.row_mean(x, m).tolist() == pytest.approx(want, rel=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"advantages must be a \(B, T\)"):
        normalize.check_mask(torch.zeros(3), torch.ones(3), "advantages")
    with pytest.raises(ValueError, match="mask shape"):
        normalize.masked_mean(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
