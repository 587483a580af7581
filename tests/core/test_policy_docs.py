"""docs/policy.md is generated from the schema; this fails when it is stale."""

from __future__ import annotations

from guardrails.policy.docs import policy_reference
from guardrails.policy.loader import policy_schema

from .conftest import REPO


def test_the_committed_policy_reference_is_current() -> None:
    committed = (REPO / "docs" / "policy.md").read_text(encoding="utf-8")
    assert committed == policy_reference(), (
        "docs/policy.md is stale: run `guardrails policy docs > docs/policy.md`"
    )


def test_every_key_of_the_schema_is_documented() -> None:
    page = policy_reference()
    schema = policy_schema()
    for key in schema["properties"]:
        assert f"`{key}`" in page
    for definition in schema["$defs"].values():
        for key in definition.get("properties", {}):
            assert f".{key}`" in page or f"`{key}`" in page, key
