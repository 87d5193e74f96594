"""docs/reasons.md is the table of reasons in crtool/policy.py, word for word: a rule added,
renamed or reworded in the code without the document (or the other way round) fails here."""

from __future__ import annotations

from pathlib import Path

from crtool import policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "reasons.md"


def table(rows: list[tuple[str, str]]) -> str:
    lines = ["| reason | what triggers it |", "|---|---|"]
    lines += [f"| `{name}` | {trigger} |" for name, trigger in rows]
    return "\n".join(lines) + "\n"


def expected_tables() -> list[str]:
    held = [(rule.reason, rule.trigger) for rule in policy.SUPPRESSION_RULES]
    held += list(policy.RATE_LIMIT_RULES)
    return [table(held), table(list(policy.DROP_REASONS.items())),
            table(list(policy.WHITELIST_HOLD_REASONS.items())),
            table(list(policy.UNSENT_REASONS.items())),
            table(list(policy.REPLY_REASONS.items())), table(list(policy.TAG_REASONS.items()))]


def test_the_document_shows_every_reason_as_the_code_has_it() -> None:
    text = DOC.read_text(encoding="utf-8")
    for expected in expected_tables():
        assert expected in text, f"docs/reasons.md lacks this table; paste it:\n\n{expected}"


def test_the_held_table_is_in_the_order_the_rules_are_tried() -> None:
    """The first rule that applies is the one recorded, so the order is part of the meaning."""
    names = [line.split("`")[1] for line in expected_tables()[0].splitlines()[2:]]
    assert tuple(names) == policy.SUPPRESSION_REASONS


def test_no_reason_is_both_a_hold_and_a_drop() -> None:
    held = set(policy.SUPPRESSION_REASONS) | set(policy.WHITELIST_HOLD_REASONS)
    assert not held & set(policy.DROP_REASONS)
    assert not set(policy.SUPPRESSION_REASONS) & set(policy.WHITELIST_HOLD_REASONS)
    assert not set(policy.UNSENT_REASONS) & (held | set(policy.DROP_REASONS))
    unasked = set(policy.REPLY_REASONS) | set(policy.TAG_REASONS)
    assert not unasked & (held | set(policy.DROP_REASONS) | set(policy.UNSENT_REASONS))
