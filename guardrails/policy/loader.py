"""Policy YAML -> Policy, reporting every problem at once as FILE:LINE:COLUMN: message.

PyYAML's composer keeps a mark for every node; we build the plain data ourselves so each value
remembers where it was written, then let pydantic validate and map its error locations back.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from guardrails.policy.model import Policy

_Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, order=True)
class PolicyIssue:
    line: int
    column: int
    message: str
    file: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(ValueError):
    """The policy is not valid; `issues` lists every problem found, in file order."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyIssue(1, 1, f"cannot read the policy: {exc}", str(path))]) from exc
    return parse_policy(text, str(path))


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError([PolicyIssue(line, column, f"YAML: {problem}", filename)]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue(1, 1, f"YAML: {exc}", filename)]) from exc
    if node is None:
        raise PolicyError([PolicyIssue(1, 1, "the policy file is empty", filename)])
    builder = _Builder(filename)
    data = builder.build(node, ())
    if data is None:
        raise PolicyError([PolicyIssue(1, 1, "the policy file is empty", filename)])
    if not isinstance(data, dict):
        builder.issue(node, "the policy must be a mapping of keys such as version, rules, mode")
        raise PolicyError(builder.issues)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            issue = builder.locate(tuple(error["loc"]), error)
            # A union reports once per member; one message per place is enough.
            if not any((i.line, i.column) == (issue.line, issue.column) for i in builder.issues):
                builder.issues.append(issue)
        raise PolicyError(builder.issues) from exc
    if builder.issues:
        raise PolicyError(builder.issues)
    return policy


def policy_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Mailbox Guardrails policy (version 1)"
    return schema


def schema_json() -> str:
    return json.dumps(policy_schema(), indent=2)


class _Builder:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[PolicyIssue] = []
        self.values: dict[_Path, yaml.Node] = {}
        self.keys: dict[_Path, yaml.Node] = {}
        self._constructor = yaml.SafeLoader("")

    def issue(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.issues.append(PolicyIssue(mark.line + 1, mark.column + 1, message, self.filename))

    def build(self, node: yaml.Node, path: _Path) -> Any:
        self.values[path] = node
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    self.issue(key_node, f"keys must be names, found {key!r}")
                    continue
                if key in result:
                    self.issue(key_node, f"'{key}' is set twice; the second one would win")
                self.keys[(*path, key)] = key_node
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)

    def locate(self, loc: _Path, error: Any) -> PolicyIssue:
        kind = error["type"]
        # Union members add their type name to the location; drop those segments.
        path = tuple(p for p in loc if isinstance(p, int) or (isinstance(p, str) and _known(p)))
        node = self.keys.get(path) if kind == "extra_forbidden" else None
        while node is None:
            node = self.values.get(path)
            if node is None:
                if not path:
                    break
                path = path[:-1]
        mark = node.start_mark if node is not None else None
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        where = _dotted(p for p in loc if p in path or isinstance(p, int)) or "policy"
        return PolicyIssue(line, column, _message(kind, loc, error, where), self.filename)


def _dotted(segments: Iterable[str | int]) -> str:
    text = ""
    for segment in segments:
        text += f"[{segment}]" if isinstance(segment, int) else f".{segment}"
    return text.lstrip(".")


def _known(segment: str) -> bool:
    # pydantic names union members like 'str' or 'int' or 'function-after[...]' in locations.
    return segment not in {"str", "int", "bool", "float", "none"} and "[" not in segment


def _message(kind: str, loc: _Path, error: Any, where: str) -> str:
    if kind == "extra_forbidden":
        name = str(loc[-1])
        parent = _model_at(loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(name, list(parent.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            hint += "; allowed here: " + ", ".join(parent.model_fields)
        return f"unknown key '{name}'{hint}"
    if kind == "missing":
        return f"'{loc[-1]}' is required under {_dotted(loc[:-1]) or 'the top level'}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _model_at(loc: _Path) -> type[BaseModel] | None:
    model: type[BaseModel] = Policy
    for segment in loc:
        if isinstance(segment, int):
            continue
        field = model.model_fields.get(str(segment))
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model
