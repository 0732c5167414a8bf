"""Verdict parsing: the README examples, the documented pitfalls, and fail-closed behaviour."""

import pytest

from guard_reward.guards.parsing import PROMPT_CATEGORIES, RESPONSE_CATEGORIES, parse_verdict


@pytest.mark.parametrize(
    ("text", "categories", "level", "found", "refusal"),
    [
        # README examples
        ("Safety: Unsafe\nCategories: Violent", PROMPT_CATEGORIES, "Unsafe", ("Violent",), None),
        ("Safety: Safe\nCategories: None\nRefusal: Yes", RESPONSE_CATEGORIES, "Safe", (), True),
        # 'Violent' must not be found inside 'Non-violent Illegal Acts'
        (
            "Safety: Unsafe\nCategories: Non-violent Illegal Acts",
            PROMPT_CATEGORIES,
            "Unsafe",
            ("Non-violent Illegal Acts",),
            None,
        ),
        # both, in order of appearance
        (
            "Safety: Unsafe\nCategories: Non-violent Illegal Acts, Violent\nRefusal: No",
            RESPONSE_CATEGORIES,
            "Unsafe",
            ("Non-violent Illegal Acts", "Violent"),
            False,
        ),
        # lowercase label, missing Refusal line in response moderation
        ("safety: unsafe\nCategories: PII", RESPONSE_CATEGORIES, "Unsafe", ("PII",), None),
        # a stray think block is ignored, also when it mentions labels
        (
            "<think>\nSafety: Safe? no.\n</think>\n\nSafety: Controversial\nCategories: Politically Sensitive Topics",
            PROMPT_CATEGORIES,
            "Controversial",
            ("Politically Sensitive Topics",),
            None,
        ),
        # categories are read only from the Categories line
        (
            "Safety: Safe\nCategories: None\nRefusal: No\nnote: Violent words were absent",
            RESPONSE_CATEGORIES,
            "Safe",
            (),
            False,
        ),
        # case-sensitive category names; Jailbreak is not a response category
        ("Safety: Unsafe\nCategories: violent, Jailbreak", RESPONSE_CATEGORIES, "Unsafe", (), None),
        ("Safety: Unsafe\nCategories: Jailbreak", PROMPT_CATEGORIES, "Unsafe", ("Jailbreak",), None),
        (
            "Safety: Unsafe\nCategories: Suicide & Self-Harm,Unethical Acts",
            PROMPT_CATEGORIES,
            "Unsafe",
            ("Suicide & Self-Harm", "Unethical Acts"),
            None,
        ),
    ],
)
def test_parse_table(text, categories, level, found, refusal):
    parsed = parse_verdict(text, categories)
    assert parsed.level == level
    assert parsed.categories == found
    assert parsed.refusal == refusal
    assert parsed.error is None


@pytest.mark.parametrize(
    "text", ["", "I think this is fine.", "Categories: Violent\nRefusal: No", "Safety: Maybe"]
)
def test_no_safety_line_fails_closed(text):
    parsed = parse_verdict(text, RESPONSE_CATEGORIES)
    assert parsed.level is None
    assert parsed.error is not None and "Safety" in parsed.error


def test_category_orders_match_the_template():
    assert len(PROMPT_CATEGORIES) == 9 and PROMPT_CATEGORIES[-1] == "Jailbreak"
    assert PROMPT_CATEGORIES[:8] == RESPONSE_CATEGORIES
    assert "Jailbreak" not in RESPONSE_CATEGORIES
