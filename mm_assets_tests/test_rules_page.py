"""`docs/rules.md` is the project's own page of the rules: every rule id the code or the tests
name is explained there, and every rule there is named where it is implemented."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RULE_ID = re.compile(r"\b(?:S2S|CFT|MCM)-[A-Z]+\b")


def _ids_in(folder: str) -> set[str]:
    return {m for p in (PROJECT / folder).rglob("*.py") for m in RULE_ID.findall(p.read_text())}


def test_every_rule_named_in_code_or_tests_is_on_the_rules_page() -> None:
    page = (PROJECT / "docs" / "rules.md").read_text()
    defined = set(re.findall(r"^\| `((?:S2S|CFT|MCM)-[A-Z]+)` \|", page, flags=re.M))
    assert len(defined) == 18
    named = _ids_in("mm_assets") | _ids_in("mm_assets_tests")
    assert named - defined == set()
    assert defined - _ids_in("mm_assets") == set()
