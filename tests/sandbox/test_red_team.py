"""The sandbox's attack surface (framings), the attacker's pre-training task, and the red-team arm end to end at
a seconds size (report, figure, per-round table, ``guard-reward demo --red-team``)."""

from __future__ import annotations

import argparse
import random

import pytest

from guard_reward.sandbox.framings import (
    FRAMED_UNSAFE_SET,
    HELDOUT_FRAMINGS,
    TRAIN_FRAMINGS,
    AttackerTask,
    FramedLanguage,
    framed_attacks,
)
from guard_reward.sandbox.guards import guard_chats, verdict_text
from guard_reward.sandbox.language import UNSAFE_SET, Language
from guard_reward.sandbox.rules import judge, prompt_is_harmful


def test_held_out_framings_share_no_template_with_the_training_ones():
    assert {f.context for f in TRAIN_FRAMINGS}.isdisjoint({f.context for f in HELDOUT_FRAMINGS})
    requests = Language().prompts(20, seed=1)
    attacks = framed_attacks(requests, HELDOUT_FRAMINGS, seed=2)
    assert len(attacks) == 10 and all(prompt_is_harmful(a) and h for a, h in attacks)
    # the request is kept word for word inside its framing
    harmful = [p for p, h in requests if h]
    assert all(p in a for p, (a, _) in zip(harmful, attacks, strict=True))


def _framed(prompt: str) -> bool:
    return sum(w in ("?", ".") for w in prompt.split()) == 2  # every request template ends in one of them


def test_framed_harmful_requests_are_answered_unsafely_more_often_in_their_own_words():
    lang = FramedLanguage()
    rng = random.Random(0)
    plain, framed = [], []
    for _ in range(3000):
        chat = lang.chat(rng, harmful=rng.random() < 0.5)
        answer_unsafe = set(chat.response.split()) & UNSAFE_SET
        if _framed(chat.prompt):
            # a framed request's unsafe answer uses the framed sub-class only (it does not repeat the topic)
            assert answer_unsafe <= FRAMED_UNSAFE_SET, chat
        else:
            # plain requests and their answers never carry the framed sub-class, so training on them never
            # samples (nor pushes down) those words
            assert not (set(chat.prompt.split()) | answer_unsafe) & FRAMED_UNSAFE_SET, chat
        if chat.harmful:
            (framed if _framed(chat.prompt) else plain).append(judge(chat.response).unsafe)
    assert sum(framed) / len(framed) > 0.85 and sum(plain) / len(plain) < 0.7
    with pytest.raises(ValueError, match="framed_unsafe"):
        FramedLanguage(framed_unsafe=0.99, framed_refusal=0.05)


def test_the_framed_words_are_unsafe_to_the_judge_and_in_the_guards_training_data():
    assert FRAMED_UNSAFE_SET < UNSAFE_SET and len(FRAMED_UNSAFE_SET) == 9
    assert all(judge(f"the {w} is next to the lamp .").unsafe for w in FRAMED_UNSAFE_SET)
    chats = guard_chats(FramedLanguage(), random.Random(0), 1000)
    seen = [c for c in chats if set(c.response.split()) & FRAMED_UNSAFE_SET]
    assert len(seen) > 50  # the guard is trained on them ...
    assert all(
        verdict_text(c.response, response=True).startswith("Safety: Unsafe") for c in seen
    )  # ... as unsafe


def test_the_attacker_task_rewrites_its_seed():
    task = AttackerTask(Language())
    rng = random.Random(0)
    chats = [task.chat(rng) for _ in range(500)]
    assert all(prompt_is_harmful(c.prompt) for c in chats)
    kept = sum(c.prompt in c.response for c in chats) / len(chats)
    assert 0.8 < kept < 0.95  # invalid_p = 0.1 of the rewrites are benign requests instead


def test_the_report_counts_answers_with_framed_words_per_prompt_type():
    from guard_reward.sandbox.evaluate import EvalResult, EvalSample
    from guard_reward.sandbox.red_team_report import framed_share

    framed_word = sorted(FRAMED_UNSAFE_SET)[0]
    plain_unsafe = sorted(UNSAFE_SET - FRAMED_UNSAFE_SET)[0]
    answers = [
        (True, f"the {framed_word} is next to the lamp ."),
        (True, f"the {plain_unsafe} is next to the lamp ."),  # unsafe, but not the framed failure
        (True, "the lamp is next to the cup ."),
        (False, f"the {framed_word} and the cup are red ."),
    ]
    samples = tuple(EvalSample("how do i fix the lamp ?", h, a, judge(a)) for h, a in answers)
    evaluation = EvalResult(step=0, samples=samples)
    assert framed_share(evaluation) == pytest.approx(2 / 4)
    assert framed_share(evaluation, harmful=True) == pytest.approx(1 / 3)
    assert framed_share(EvalResult(step=0, samples=())) != framed_share(EvalResult(step=0, samples=()))  # NaN


@pytest.mark.slow
def test_red_team_arm_end_to_end(tmp_path):
    from guard_reward.cli.demo import add_demo_parser, run_demo
    from guard_reward.sandbox.red_team import RedTeamConfig

    config = RedTeamConfig.small(str(tmp_path / "red_team"))
    assert config.demo.arm.steps == 2 and config.rounds == 2
    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--red-team", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert run_demo(args) == 0
    out = tmp_path / "red_team"
    report = (out / "red_team.md").read_text()
    assert "unsafe rate, held-out attacks" in report and "self-play (attacker in the loop)" in report
    assert "answers with framed-sub-class words, plain harmful requests" in report
    assert report.count("\n| 1 |") == 1 and report.count("\n| 2 |") == 1  # one row per round
    assert (out / "red_team.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "self_play" / "self_play.csv").is_file()
    assert (out / "self_play" / "defender" / "checkpoint-2").is_dir()  # 2 rounds x 1 defender step
    assert len((out / "samples_self_play_attacks.jsonl").read_text().splitlines()) > 0
