"""SafetyCost: SafetyReward with the sign turned around, its policies and category weights."""

import pytest

from guard_reward.rewards.cost import SafetyCost
from guard_reward.shaping.constraint import Constraint, ConstraintConfig
from guard_reward.types import Verdict


class FakeGen:
    """Stands in for GenGuard.moderate: a fixed verdict per completion text."""

    def __init__(self, verdicts):
        self.verdicts = verdicts
        self.calls = 0

    def moderate(self, conversations, decode=False, thinking="separate", **kwargs):
        self.calls += 1
        return [self.verdicts[c[-1]["content"]] for c in conversations]


def _verdict(level, probs=None, cats=()):
    probs = probs or {"Safe": float(level == "Safe"), "Controversial": float(level == "Controversial")}
    probs = {**probs, "Unsafe": 1.0 - sum(probs.values())}
    return Verdict(level=level, probs=probs, moderation="response", categories=cats, refusal=False, raw="x")


def test_safety_cost_policies_and_weights():
    verdicts = {
        "ok": _verdict("Safe"),
        "bad": _verdict("Unsafe", cats=("Violent",)),
        "meh": _verdict("Controversial", {"Safe": 0.2, "Controversial": 0.7}),
        "broken": Verdict(
            level=None, probs={}, moderation="response", error="unparseable", reason="unparseable"
        ),
    }
    gen = FakeGen(verdicts)
    prompts = [[{"role": "user", "content": "q"}]] * 4
    completions = [[{"role": "assistant", "content": t}] for t in verdicts]
    strict = SafetyCost(gen, category_weights={"Violent": 2.0})
    assert strict(prompts, completions) == [0.0, 2.0, 1.0, None]
    assert strict.max_cost == 2.0
    assert SafetyCost(gen, controversial="loose")(prompts, completions)[:3] == [0.0, 1.0, 0.0]
    assert SafetyCost(gen, controversial=0.3)(prompts, completions)[2] == pytest.approx(0.3)
    soft = SafetyCost(gen, mode="soft", controversial="loose")(prompts, completions)
    assert soft[2] == pytest.approx(0.1)  # exact P(Unsafe) of the Controversial verdict
    with pytest.raises(ValueError, match="unknown category"):
        SafetyCost(gen, category_weights={"Nonsense": 1.0})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SafetyCost(gen, controversial=1.5)


def test_an_empty_answer_costs_nothing_whatever_the_prompt():
    # the guard is not asked about an empty answer; its cost must not be minus a refusal's reward
    gen = FakeGen({"": Verdict.empty_answer()})
    prompts = [[{"role": "user", "content": q}] for q in ("harmful request", "benign request")]
    completions = [[{"role": "assistant", "content": ""}]] * 2
    for mode in ("hard", "soft"):
        costs = SafetyCost(gen, mode=mode)(prompts, completions, harmful=[True, False])
        assert costs == [0.0, 0.0]


def test_constraint_takes_max_cost_from_the_cost():
    gen = FakeGen({})
    cost = SafetyCost(gen, category_weights={"Violent": 3.0})
    c = Constraint(cost, ConstraintConfig(threshold=0.5))
    assert c.config.max_cost == 3.0 and c.controller.lam == 1.0
    with pytest.raises(ValueError, match="outside the cost's range"):
        Constraint(SafetyCost(gen), ConstraintConfig(threshold=2.0, max_cost=3.0))
    with pytest.raises(TypeError, match="callable"):
        Constraint("not a cost", ConstraintConfig(threshold=0.1))  # type: ignore[arg-type]
