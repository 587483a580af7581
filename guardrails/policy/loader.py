"""Policy YAML -> Policy, reporting every problem at once as FILE:LINE:COLUMN: message.

PyYAML's composer keeps a mark for every node; we build the plain data ourselves so each value
remembers where it was written, then let pydantic validate and map its error locations back.

A policy is input to a security control, so reading one is bounded and never ends in a
traceback: at most 256 KiB of UTF-8 text, one document, no anchors or aliases (so no alias
bombs, and no merge keys), no tags but !!str, at most 20 levels deep and 20,000 values, and no
number longer than 20 digits. Scalars are read as YAML 1.1 reads them, except that dates and
base-60 numbers stay text. Every problem found is a PolicyIssue with its line and column.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from guardrails.policy.model import Policy, quoted

MAX_POLICY_BYTES = 256 * 1024
MAX_DEPTH = 20
MAX_VALUES = 20_000
MAX_NUMBER_DIGITS = 20
MAX_MESSAGE = 500

_Path = tuple[str | int, ...]
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
# What the YAML reader accepts; anything else is reported with its place before YAML sees it.
_NOT_YAML = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CHARACTER_NAMES = {0: "a null byte", 0x1B: "an escape, as in terminal colour codes"}


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
        with path.open("rb") as file:
            data = file.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError([_issue(1, 1, f"cannot read the policy: {exc}", str(path))]) from exc
    return parse_policy(_decode(data, str(path)), str(path))


def parse_policy(text: str, filename: str = "<policy>") -> Policy:
    size = len(text) if len(text) > MAX_POLICY_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise PolicyError([_issue(1, 1, _too_large(), filename)])
    odd = _NOT_YAML.search(text)
    if odd is not None:
        line, column = _line_column(text, odd.start())
        code = ord(odd.group())
        name = f" ({_CHARACTER_NAMES[code]})" if code in _CHARACTER_NAMES else ""
        message = f"the character U+{code:04X} is not allowed in a policy{name}; remove it"
        raise PolicyError([_issue(line, column, message, filename)])
    try:
        node = _Loader(text).get_single_node()
    except _Refused as exc:
        raise PolicyError([_issue(exc.line, exc.column, exc.message, filename)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        key = exc.context_mark
        if (
            key
            and mark
            and exc.context == "while scanning a simple key"
            and mark.index - key.index > 1024
        ):
            mark, problem = key, "a key can be at most 1024 characters long"
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyError([_issue(line, column, f"YAML: {problem}", filename)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([_issue(1, 1, f"YAML: {exc}", filename)]) from None
    if node is None:
        raise PolicyError([_issue(1, 1, "the policy file is empty", filename)])
    builder = _Builder(filename, text)
    data = builder.build(node, ())
    if data is None:
        raise PolicyError([_issue(1, 1, "the policy file is empty", filename)])
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
        raise PolicyError(builder.issues) from None
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


def _issue(line: int, column: int, message: str, filename: str) -> PolicyIssue:
    """An issue whose message is one printable line of bounded length, whatever the file held."""
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in message)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return PolicyIssue(line, column, text, filename)


def _too_large() -> str:
    return (
        f"a policy may be at most 256 KiB ({MAX_POLICY_BYTES} bytes); this file is larger "
        "(is it the right file?)"
    )


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _decode(data: bytes, filename: str) -> str:
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError([_issue(1, 1, _too_large(), filename)])
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        message = "cannot read the policy: it is UTF-16 text; save it as UTF-8"
        raise PolicyError([_issue(1, 1, message, filename)])
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        message = (
            f"cannot read the policy: it is not UTF-8 text (byte 0x{data[exc.start]:02X}); "
            "save it as UTF-8"
        )
        raise PolicyError([_issue(line, column, message, filename)]) from None


class _Mark(Protocol):
    line: int
    column: int


class _Refused(Exception):
    """Something a policy never needs, refused while reading (before it could cost anything)."""

    def __init__(self, mark: _Mark | None, message: str) -> None:
        super().__init__(message)
        self.line, self.column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        self.message = message


class _Resolver(BaseResolver):
    """YAML 1.1's implicit types without timestamps, base-60 numbers, merge keys and '='."""


_Resolver.add_implicit_resolver(
    _BOOL,
    re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
_Resolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Resolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _Loader(Reader, Scanner, Parser, Composer, _Resolver):
    """PyYAML's reader, scanner and parser, and a composer that refuses what a policy never uses.

    Every refusal happens as the node is met, before anything is built from it: an alias bomb
    stops at its first anchor, deep nesting at level 21, a flood of values at the 20,001st.
    """

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)
        self._depth = 0
        self._count = 0

    def _next(self) -> yaml.Event:
        event: yaml.Event = self.get_event()  # type: ignore[no-untyped-call]
        return event

    def get_single_node(self) -> yaml.Node | None:
        self._next()  # the stream's start
        document = None
        if not self.check_event(yaml.StreamEndEvent):
            document = self.compose_document()
        if not self.check_event(yaml.StreamEndEvent):
            mark = self._next().start_mark
            where = "this '---'" if self._text_at(mark).startswith("---") else "this"
            raise _Refused(mark, f"a policy is one YAML document; {where} starts a second one")
        self._next()
        return document

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                mark,
                "anchors and aliases (&name / *name) are not supported in a policy; "
                "write the value out where it is needed",
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and not (tag == _STR and isinstance(event, yaml.ScalarEvent)):
            shown = "!!" + tag[18:] if tag.startswith("tag:yaml.org,2002:") else tag
            raise _Refused(
                mark,
                f"the YAML tag {shown[:60]} is not supported in a policy (only !!str, to make "
                "a value text)",
            )
        self._count += 1
        if self._count > MAX_VALUES:
            raise _Refused(mark, f"the policy has more than {MAX_VALUES} values")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(mark, f"the policy is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    @staticmethod
    def _text_at(mark: object) -> str:
        buffer, pointer = getattr(mark, "buffer", None), getattr(mark, "pointer", 0)
        return buffer[pointer : pointer + 3] if isinstance(buffer, str) else ""


class _Builder:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.issues: list[PolicyIssue] = []
        self.values: dict[_Path, yaml.Node] = {}
        self.keys: dict[_Path, yaml.Node] = {}
        # Lines as YAML counts them, to map a template's lines onto the file's.
        self.lines = re.split("\r\n|[\r\n\x85\u2028\u2029]", text)

    def issue(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.issues.append(_issue(mark.line + 1, mark.column + 1, message, self.filename))

    def build(self, node: yaml.Node, path: _Path) -> Any:
        self.values[path] = node
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.key(key_node)
                if key is None:
                    continue
                if key in result:
                    self.issue(key_node, f"'{key}' is set twice; the second one would win")
                self.keys[(*path, key)] = key_node
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self.scalar(node)

    def key(self, node: yaml.Node) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            if node.value == "<<" and node.style is None:
                self.issue(
                    node, "merge keys (<<) are not supported in a policy; write the keys out"
                )
                return None
            return str(node.value)
        if isinstance(node, yaml.ScalarNode):
            text = str(node.value)
            small = len(text) <= MAX_NUMBER_DIGITS and node.tag != _FLOAT
            shown = repr(self.scalar(node)) if small else quoted(text)
        else:
            shown = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        self.issue(node, f"keys must be names, found {shown}")
        return None

    def scalar(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value)
        if node.tag == _INT:
            digits = len(text.lstrip("+-").replace("_", ""))
            if digits > MAX_NUMBER_DIGITS:
                self.issue(
                    node,
                    f"a number of {digits} digits; numbers in a policy have at most "
                    f"{MAX_NUMBER_DIGITS} digits",
                )
                return None
            try:
                return _CONSTRUCTOR.construct_yaml_int(node)
            except ValueError:  # YAML 1.1's pattern admits '0x_' and '0b_'
                self.issue(node, f"{quoted(text)} is not a number (quote it if it is text)")
                return None
        if node.tag == _FLOAT:
            self.issue(
                node,
                f"{quoted(text)} is a decimal number; numbers in a policy are whole numbers "
                "(quote it if it is text)",
            )
            return text
        if node.tag == _BOOL:
            return _CONSTRUCTOR.construct_yaml_bool(node)
        if node.tag == _NULL:
            return None
        return text

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
        context = error.get("ctx") or {}
        if node is not None and "template_line" in context:
            line, column = self.in_template(
                node, context["template_line"], context["template_column"], (line, column)
            )
        where = _dotted(p for p in loc if p in path or isinstance(p, int)) or "policy"
        return _issue(line, column, _message(kind, loc, error, where), self.filename)

    def in_template(
        self, node: yaml.Node, line: int, column: int, fallback: tuple[int, int]
    ) -> tuple[int, int]:
        """A place inside a template, in the file: exact for a literal block (|), else its start."""
        if not isinstance(node, yaml.ScalarNode) or node.style != "|":
            return fallback
        template_lines = str(node.value).split("\n")
        file_line = node.start_mark.line + line  # the block starts on the line after the '|'
        if not 1 <= line <= len(template_lines) or file_line >= len(self.lines):
            return fallback
        written, source = template_lines[line - 1], self.lines[file_line]
        indent = len(source) - len(written)
        if indent < 0 or source[indent:] != written or source[:indent].strip(" "):
            return fallback
        return file_line + 1, indent + column


_CONSTRUCTOR = yaml.SafeLoader("")


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
            from difflib import get_close_matches  # only for a policy with a mistake in it

            close = get_close_matches(name, list(parent.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            hint += "; allowed here: " + ", ".join(parent.model_fields)
        return f"unknown key {quoted(name)}{hint}"
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
