"""The guides name only commands, options and settings that exist (docs/*.md, README.md)."""

from __future__ import annotations

import re

import pytest

from guardrails.cli import _parser

from .conftest import REPO

GUIDES = [REPO / "README.md", REPO / "docs" / "deploy.md", REPO / "docs" / "operations.md"]
COMMAND = re.compile(r"guardrails((?: [a-z][a-z-]*)+)((?: --[a-z][a-z-]*)*)")
SETTING = re.compile(r"\b((?:GUARDRAILS|AZURE|SERVICEBUS|DATAVERSE)_[A-Z_]+)\b")


def _subcommands() -> dict[tuple[str, ...], set[str]]:
    """Every command path and the options it accepts."""
    found: dict[tuple[str, ...], set[str]] = {}

    def walk(parser: object, path: tuple[str, ...]) -> None:
        options: set[str] = set()
        for action in getattr(parser, "_actions", ()):
            options.update(o for o in action.option_strings if o.startswith("--"))
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    walk(sub, (*path, name))
        found[path] = options

    walk(_parser(), ())
    return found


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_command_and_option_a_guide_names_exists(guide: object) -> None:
    commands = _subcommands()
    text = guide.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    for match in COMMAND.finditer(text):
        words = tuple(match.group(1).split())
        # The longest known command path the words start with (the rest are arguments).
        path = max((p for p in commands if p and words[: len(p)] == p), key=len, default=None)
        assert path, f"{guide}: `guardrails {' '.join(words)}` is not a command"
        for option in match.group(2).split():
            assert option in commands[path], f"{guide}: {' '.join(path)} has no {option}"


def test_every_setting_the_guides_name_is_read_somewhere() -> None:
    code = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("guardrails", "infra")
        for path in (REPO / folder).rglob("*")
        if path.suffix in (".py", ".bicep", ".json") and "tests" not in path.parts
    )
    code += (REPO / "function_app.py").read_text(encoding="utf-8")
    for guide in GUIDES:
        for setting in set(SETTING.findall(guide.read_text(encoding="utf-8"))):
            assert setting in code, f"{guide.name} names {setting}, which nothing reads"
