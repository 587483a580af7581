"""The notification a person receives, and the template language admins write it in.

Admins write the template; people supply the values (the mailbox's name and address are what the
user typed into their own row, names come from the directory), so:

- Templates are Jinja2 in `SandboxedEnvironment`s with no globals and a short list of filters:
  even a template that skipped the checks below cannot reach into Python.
- In the body every value is HTML-escaped (quotes too); `violations` is HTML the guardrail builds
  from escaped parts. The subject is plain text in which every line break becomes a space.
- Escaping protects text and quoted attribute values only. `check_template` therefore reads the
  template as an HTML parser would and refuses a value anywhere else: in an unquoted attribute
  value, an event-handler, URL or style attribute (or any attribute that is not text for people),
  a <script> or <style> element, a comment, a tag or an attribute name. <svg>, <math> and
  <noscript> are refused outright: inside them parsers disagree on what is markup.
- Only `{{ placeholder }}` and `{{ placeholder | filter(constants) }}`. Statements (`{% if %}`,
  `{% for %}`, `{% autoescape %}`, ...) are refused: the check reads the template as written,
  and a condition or loop could assemble markup in which a value lands somewhere other than
  where it is written. Any other expression is refused too: the sandbox stops `__class__`, but not
  `{{ 'x' * 10**9 }}`, a gigabyte per notification in a function that handles every change.
  `{% raw %}` (literal text) and `{# comments #}` are fine.
- Templates are checked when the policy is read, and compiled on first use, once per text; a
  message reuses the compiled template, and rendering never compiles a template that was not
  checked.
- Jinja is imported, and its environments built, when a template first needs it: a policy
  whose subject is plain text (no '{') and that keeps the built-in template starts without it.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from markupsafe import Markup

from guardrails.mailbox import COLUMN_LABELS, Column, describe
from guardrails.once import Once
from guardrails.policy.model import (
    SUBJECT_FIELDS,
    TEMPLATE_FIELDS,
    TEMPLATE_FILTERS,
    TEXT_ATTRIBUTES,
)

if TYPE_CHECKING:
    from jinja2 import Template, nodes
    from jinja2.sandbox import SandboxedEnvironment

    from guardrails.engine import Decision
    from guardrails.policy.model import Notifications

DEFAULT_TEMPLATE = (
    resources.files("guardrails").joinpath("templates/notification.html").read_text("utf-8")
)

_FILTER_ALIASES = {"d": "default", "e": "escape"}
_URL_ATTRIBUTES = frozenset(
    {
        "href",
        "src",
        "srcset",
        "imagesrcset",
        "action",
        "formaction",
        "background",
        "poster",
        "cite",
        "data",
        "codebase",
        "classid",
        "archive",
        "longdesc",
        "lowsrc",
        "dynsrc",
        "usemap",
        "manifest",
        "ping",
        "profile",
        "icon",
        "itemtype",
        "itemid",
        "xlink:href",
        "xml:base",
        "xmlns",
        "xmlns:xlink",
    }
)


def _escape(value: object) -> Markup:
    """Every value through html.escape, as the violations list is; HTML we built stays HTML."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value)))  # noqa: S704 - this is the escaping


def _environment(*, body: bool) -> SandboxedEnvironment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    environment = SandboxedEnvironment(
        autoescape=body,  # stays on behind finalize, for anything finalize does not see
        finalize=_escape if body else None,
        undefined=StrictUndefined,
        auto_reload=False,
    )
    environment.globals.clear()  # no range, lipsum, cycler, joiner, namespace, dict
    names = [*TEMPLATE_FILTERS, *_FILTER_ALIASES]
    environment.filters = {name: environment.filters[name] for name in names}
    environment.tests = {}
    return environment


# Subjects (plain text) and bodies (HTML), each in its own environment.
_ENVIRONMENTS: dict[bool, Once[SandboxedEnvironment]] = {True: Once(), False: Once()}


def templates(*, subject: bool) -> SandboxedEnvironment:
    """The environment subjects (plain text) or bodies (HTML) are read and compiled in: built on
    first use, once, and shared by every thread."""
    return _ENVIRONMENTS[subject].get(lambda: _environment(body=not subject))


class TemplateProblem(ValueError):
    """A template the guardrail will not use; line and column are inside the template, from 1."""

    def __init__(self, problem: str, line: int, column: int) -> None:
        super().__init__(f"{problem} (template line {line}, column {column})")
        self.problem = problem
        self.line = line
        self.column = column


_compile_lock = threading.Lock()


def compile_template(text: str, *, subject: bool = False) -> Template:
    """The checked, compiled template for `text`; compiled once per text (cached), however many
    messages ask for it at the same time."""
    with _compile_lock:
        return _compiled(text, subject)


@functools.lru_cache(maxsize=32)
def _compiled(text: str, subject: bool) -> Template:
    check_template(text, subject=subject)
    return templates(subject=subject).from_string(_newlines(text))


def render(
    decision: Decision,
    settings: Notifications,
    *,
    owner_name: str | None,
    owner_email: str | None,
    initiator: str | None,
    organization_name: str | None,
    mailbox_name: str | None,
    wrote: bool,
    mailbox_email: str | None = None,
) -> tuple[str, str]:
    """(subject, html body).

    Without `mailbox_email`, the address on the row is what the decision knows of it: the one a
    revert wrote back, else the one the change set or the one before it.
    """
    action = (
        "Changes made to your Dynamics 365 mailbox settings were not allowed and have been "
        "changed back."
        if wrote
        else "Changes made to a Dynamics 365 mailbox were found that the organization's "
        "policy does not allow."
    )
    unnamed = "your mailbox" if decision.notify_owner else "the mailbox"
    values = {
        "mailbox_name": mailbox_name or unnamed,  # never the id in place of a name
        "mailbox_email": _row_address(decision, wrote=wrote)
        if mailbox_email is None
        else mailbox_email,
        "mailbox_id": decision.mailbox_id or "",
        "owner_name": owner_name or "",
        "owner_email": owner_email or "",
        "initiator": initiator or "",
        "organization_name": organization_name or "your organization",
        "action": action,
        "correlation_id": decision.correlation_id or "",
    }
    values = {key: _whole(value) for key, value in values.items()}
    violations = Markup(_whole(_violations_html(decision)))  # noqa: S704 - built from escaped parts
    body = compile_template(settings.template or DEFAULT_TEMPLATE).render(
        values, violations=violations
    )
    subject = compile_template(settings.subject, subject=True).render(values)
    return _one_line(subject), body


def _violations_html(decision: Decision) -> str:
    rows = []
    for violation in decision.violations:
        restored = (
            f"changed back to {describe(violation.column, violation.expected)}"
            if violation.enforced and violation.column in decision.patch
            else "recorded, not changed"
        )
        rows.append(
            "<li><b>"
            + html.escape(COLUMN_LABELS[violation.column])
            + "</b>: "
            + html.escape(describe(violation.column, violation.actual))
            + " &rarr; "
            + html.escape(restored)
            + "</li>"
        )
    return "<ul>" + "".join(rows) + "</ul>"


def _row_address(decision: Decision, *, wrote: bool) -> str:
    value: object = None
    if wrote and Column.EMAIL in decision.patch:
        value = decision.patch[Column.EMAIL]
    elif decision.event is not None:
        event = decision.event
        value = event.changed.get(Column.EMAIL, event.previous.get(Column.EMAIL))
    return value if isinstance(value, str) else ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _whole(text: str) -> str:
    """Lone surrogates (a JSON body can carry them) cannot be sent; they become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _one_line(text: str) -> str:
    """Plain text on one line: line breaks and every other control character become spaces."""
    spaced = "".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c for c in text)
    return " ".join(spaced.split())


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- the checks ----------------------------------------------------------------------------------

_ONLY = (
    "only placeholders such as {{ owner_name }} are allowed inside {{ }}, optionally with "
    "filters given constant arguments"
)
_LEGACY = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)(?(1)\})")
# Each {{ }} of the template stands in the rendered text as one character of this private range.
_MARK = 0xF0000
_MARKS = re.compile("[\U000f0000-\U000ffffd]")


def check_template(text: str, *, subject: bool = False) -> None:
    """Raises TemplateProblem for the first problem in `text`, a body or (subject) a subject."""
    source = _newlines(text)
    skeleton, expressions, tree = _read(source, subject=subject)
    if len(expressions) != len(skeleton.expressions) or len(expressions) >= 0xFFFE:
        raise TemplateProblem("the template could not be checked; simplify it", 1, 1)
    problems: list[tuple[int, str]] = []
    for match in _LEGACY.finditer(source):
        if match.group(2) in TEMPLATE_FIELDS:
            written = match.group(0)
            problems.append(
                (
                    match.start(),
                    f"{written} is the old placeholder syntax; write {{{{ {match.group(2)} }}}}",
                )
            )
    if skeleton.statements:
        problems.append(
            (
                skeleton.statements[0],
                "statements ({% ... %}) are not supported in a template; write values as "
                "{{ placeholder }}",
            )
        )
    shapes = [_shape(expression) for expression in expressions]
    problems.extend(
        (offset, problem)
        for (_, _, problem), offset in zip(shapes, skeleton.expressions, strict=True)
        if problem
    )
    fields = SUBJECT_FIELDS if subject else TEMPLATE_FIELDS
    names = [name for name, _, _ in shapes]
    if problems or tree is None:
        unknown = {name for name in names if name is not None and name not in fields}
    else:
        from jinja2 import meta

        # Only now: Jinja's code generator folds constants, so it must never see '9 ** 9 ** 9'.
        unknown = meta.find_undeclared_variables(tree) - fields
    for (name, filtered, _), offset in zip(shapes, skeleton.expressions, strict=True):
        problem = _field_problem(name, fields, unknown, filtered=filtered, subject=subject)
        if problem:
            problems.append((offset, problem))
    if not subject:
        scanner = _Scanner(skeleton.markup)
        scanner.run()
        problems.extend((skeleton.offsets[index], problem) for index, problem in scanner.problems)
        for number, index in enumerate(skeleton.marks):
            name = names[number]
            where = scanner.landed.get(index, _Where("unknown"))
            problem = _context_problem(name, where) if name is not None else None
            if problem:
                problems.append((skeleton.offsets[index], problem))
    if problems:
        offset, problem = min(problems)
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        raise TemplateProblem(problem, line, column)


def _read(
    source: str, *, subject: bool
) -> tuple[_Skeleton, list[nodes.Expr], nodes.Template | None]:
    """The template's skeleton, the expression of each {{ }}, and Jinja's tree (None for text).

    Every Jinja delimiter begins with '{': text without one is a single piece of text to Jinja,
    and is read as such here without importing it (tests/adversarial/test_templates.py holds the
    two readings to the same skeleton)."""
    if "{" not in source:
        return _text_skeleton(source), [], None
    from jinja2 import nodes
    from jinja2.exceptions import TemplateSyntaxError

    environment = templates(subject=subject)
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(
            f"template syntax error: {exc.message or 'invalid syntax'}", exc.lineno, 1
        ) from None
    expressions = [
        child
        for output in tree.find_all(nodes.Output)
        for child in output.nodes
        if not isinstance(child, nodes.TemplateData)
    ]
    return _skeleton(environment, source), expressions, tree


@dataclass
class _Skeleton:
    """The template's text as it renders, each {{ }} one mark, and where each piece came from."""

    markup: str = ""
    offsets: list[int] = field(default_factory=list)  # per character of markup
    marks: list[int] = field(default_factory=list)  # index in markup of each {{ }}
    expressions: list[int] = field(default_factory=list)  # offset in the template of each {{
    statements: list[int] = field(default_factory=list)  # offset in the template of each {%


def _text_skeleton(source: str) -> _Skeleton:
    """The skeleton of text without '{': all of it, less the one final line break Jinja drops."""
    text = source.removesuffix("\n")
    return _Skeleton(markup=_MARKS.sub("?", text), offsets=list(range(len(text))))


def _skeleton(environment: SandboxedEnvironment, source: str) -> _Skeleton:
    skeleton = _Skeleton()
    parts: list[str] = []
    length = 0
    position = 0
    for _, kind, value in environment.lex(source):
        at = source.find(value, position)
        if at < 0:  # every token is a piece of the source; fail closed if one is not
            raise TemplateProblem("the template could not be checked; simplify it", 1, 1)
        position = at + len(value)
        if kind == "data":
            parts.append(_MARKS.sub("?", value))
            skeleton.offsets.extend(range(at, at + len(value)))
            length += len(value)
        elif kind == "variable_begin":
            parts.append(chr(_MARK + len(skeleton.expressions)))
            skeleton.offsets.append(at)
            skeleton.marks.append(length)
            skeleton.expressions.append(at)
            length += 1
        elif kind == "block_begin":
            skeleton.statements.append(at)
    skeleton.markup = "".join(parts)
    return skeleton


def _shape(node: nodes.Node) -> tuple[str | None, bool, str | None]:
    """(the placeholder's name, or None for a constant; whether filtered; the problem, if any)."""
    from jinja2 import nodes

    filtered = False
    while isinstance(node, nodes.Filter):
        name = _FILTER_ALIASES.get(node.name, node.name)
        if name not in TEMPLATE_FILTERS:
            why = " (every value is escaped, and it would undo that)" if name == "safe" else ""
            return (
                None,
                True,
                (
                    f"the filter |{node.name} is not allowed{why}; the filters are "
                    + ", ".join(TEMPLATE_FILTERS)
                ),
            )
        arguments = [*node.args, *(keyword.value for keyword in node.kwargs)]
        constant = all(
            isinstance(argument, nodes.Const) and isinstance(argument.value, str | int)
            for argument in arguments
        )
        if node.node is None or node.dyn_args or node.dyn_kwargs or not constant:
            return None, True, _ONLY
        filtered = True
        node = node.node
    if isinstance(node, nodes.Const) and isinstance(node.value, str | int):
        return None, filtered, None
    if not isinstance(node, nodes.Name):
        return None, filtered, f"{_ONLY}; this has {_kind(node)}"
    return node.name, filtered, None


def _kind(node: nodes.Node) -> str:
    """What an expression that is not a placeholder is, in the words of the refusal."""
    from jinja2 import nodes

    kinds: tuple[tuple[type[nodes.Node], str], ...] = (
        (nodes.Getattr, "attribute access"),
        (nodes.Getitem, "an index"),
        (nodes.Call, "a call"),
        (nodes.Test, "a test (is ...)"),
        (nodes.CondExpr, "an if-expression"),
        (nodes.Concat, "concatenation (~)"),
        (nodes.Compare, "a comparison"),
        (nodes.BinExpr, "arithmetic or logic"),
        (nodes.UnaryExpr, "arithmetic or logic"),
        (nodes.Literal, "a literal that is not text"),
    )
    return next((text for cls, text in kinds if isinstance(node, cls)), type(node).__name__)


def _field_problem(
    name: str | None, fields: frozenset[str], unknown: set[str], *, filtered: bool, subject: bool
) -> str | None:
    if name is None:
        return None
    shown = f"{{{{ {name} }}}}"
    if subject and name == "violations":
        return f"{shown} is the HTML list of changes and cannot go in the subject"
    if name in unknown or name not in fields:
        from difflib import get_close_matches  # only for a template with a mistake in it

        close = get_close_matches(name, sorted(fields), n=1)
        hint = f" (did you mean {{{{ {close[0]} }}}}?)" if close else ""
        available = ", ".join(f"{{{{ {field} }}}}" for field in sorted(fields))
        return f"unknown placeholder {shown}{hint}; available: {available}"
    if name == "violations" and filtered:
        return f"{shown} is HTML and takes no filters"
    return None


@dataclass(frozen=True)
class _Where:
    kind: str  # text, attribute, raw, tag name, attribute name, comment, declaration, unknown
    detail: str = ""
    quoted: bool = False


def _context_problem(name: str, where: _Where) -> str | None:
    shown = f"{{{{ {name} }}}}"
    detail = where.detail
    if where.kind == "text":
        return None
    if where.kind == "attribute":
        if name == "violations":
            return f"{shown} is an HTML list and must stand in text, not in an attribute"
        if detail.startswith("on"):
            return f"{shown} is in the event-handler attribute {detail}, where it would be script"
        if detail in _URL_ATTRIBUTES:
            return f"{shown} is in the URL attribute {detail}, where it could be a javascript: link"
        if detail == "style":
            return f"{shown} is in a style attribute, where it would be CSS"
        if detail not in TEXT_ATTRIBUTES:
            return (
                f"{shown} is in the attribute {detail}; a value may stand only in text or in the "
                "quoted attributes " + ", ".join(TEXT_ATTRIBUTES)
            )
        if not where.quoted:
            return (
                f'{shown} is in the unquoted value of the attribute {detail}; quote it: {detail}="'
                f'{shown}"'
            )
        return None
    if where.kind == "raw":
        if detail == "script!":
            return (
                f"{shown} is inside a <script> element: after '<!--' a script can run on past "
                "its first </script>"
            )
        what = "code" if detail in {"script", "style"} else "not HTML"
        return f"{shown} is inside a <{detail}> element, whose text is {what}"
    messages = {
        "tag name": f"{shown} is in a tag name",
        "attribute name": f"{shown} is in an attribute name",
        "comment": f"{shown} is inside an HTML comment",
        "declaration": f"{shown} is inside a <!...> declaration or <?...> instruction",
    }
    return messages.get(where.kind, f"{shown} is where the check cannot tell what it would be")


_SPACE = frozenset("\t\n\f\r ")
_RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "plaintext"})
_RCDATA = frozenset({"title", "textarea"})
_REFUSED_ELEMENTS = {
    "svg": "inside it HTML parsers follow other rules, and email clients do not show it",
    "math": "inside it HTML parsers follow other rules, and email clients do not show it",
    "noscript": "parsers read what it holds as markup or as text depending on whether scripts run",
}
_COMMENT = (
    "write comments as <!-- text -->: parsers disagree on where '<!-->', '<!--->' and '--!>' "
    "end one"
)


class _Scanner:
    """Where each mark lands, read as an HTML5 tokenizer reads text (WHATWG HTML 13.2.5).

    Only the states that decide where a character lands: data, tags and attributes, comments and
    declarations, and the text of the elements that switch the tokenizer (RAWTEXT, RCDATA,
    script). Anything ambiguous between parsers is a problem rather than a guess.
    """

    def __init__(self, markup: str) -> None:
        self.markup = markup
        self.landed: dict[int, _Where] = {}
        self.problems: list[tuple[int, str]] = []

    def land(self, index: int, kind: str, detail: str = "", *, quoted: bool = False) -> None:
        if _MARK <= ord(self.markup[index]) < _MARK + 0xFFFE:
            self.landed[index] = _Where(kind, detail, quoted)

    def run(self) -> None:
        markup = self.markup
        state = "data"
        tag = attribute = quote = raw = ""
        closing = sticky = False
        start = index = 0
        while index < len(markup):
            char = markup[index]
            mark = _MARK <= ord(char) < _MARK + 0xFFFE
            if state == "data":
                if mark:
                    self.land(index, "text")
                elif char == "<":
                    state, start = "tag open", index
            elif state in {"tag open", "end tag open"}:
                if mark or (char.isascii() and char.isalpha()):
                    closing = state == "end tag open"
                    state, tag = "tag name", "" if mark else char.lower()
                    if mark:
                        self.land(index, "tag name")
                elif state == "tag open" and char == "!" and markup.startswith("--", index + 1):
                    index = self.comment(index + 3, start)
                    state = "data"
                    continue
                elif state == "tag open" and char in "!?":
                    state = "bogus"
                elif state == "tag open" and char == "/":
                    state = "end tag open"
                elif state == "end tag open" and char == ">":
                    state = "data"
                else:
                    state = "data" if state == "tag open" else "bogus"
                    continue
            elif state == "tag name":
                if mark:
                    self.land(index, "tag name")
                elif char in _SPACE:
                    state = "before attribute name"
                elif char == "/":
                    state = "self-closing"
                elif char == ">":
                    state, raw, sticky = self.tag_end(tag, start, closing=closing)
                else:
                    tag += char.lower()
            elif state in {"before attribute name", "after attribute name"}:
                if char in _SPACE:
                    pass
                elif char == "/":
                    state = "self-closing"
                elif char == ">":
                    state, raw, sticky = self.tag_end(tag, start, closing=closing)
                elif char == "=" and state == "after attribute name":
                    state = "before attribute value"
                else:
                    state, attribute = "attribute name", "" if mark else char.lower()
                    if mark:
                        self.land(index, "attribute name")
            elif state == "attribute name":
                if mark:
                    self.land(index, "attribute name")
                elif char in _SPACE:
                    state = "after attribute name"
                elif char in "/>":
                    state = "after attribute name"
                    continue
                elif char == "=":
                    state = "before attribute value"
                else:
                    attribute += char.lower()
            elif state == "before attribute value":
                if char in _SPACE:
                    pass
                elif char in "\"'":
                    state, quote = "quoted value", char
                elif char == ">":
                    state, raw, sticky = self.tag_end(tag, start, closing=closing)
                else:
                    state = "unquoted value"
                    continue
            elif state == "quoted value":
                if char == quote:
                    state = "after quoted value"
                elif mark:
                    self.land(index, "attribute", attribute, quoted=True)
            elif state == "unquoted value":
                if char in _SPACE:
                    state = "before attribute name"
                elif char == ">":
                    state, raw, sticky = self.tag_end(tag, start, closing=closing)
                elif mark:
                    self.land(index, "attribute", attribute)
            elif state in {"after quoted value", "self-closing"}:
                if char == ">":
                    state, raw, sticky = self.tag_end(tag, start, closing=closing)
                elif char == "/":
                    state = "self-closing"
                elif char in _SPACE and state == "after quoted value":
                    state = "before attribute name"
                else:
                    state = "before attribute name"
                    continue
            elif state == "bogus":
                if mark:
                    self.land(index, "declaration")
                elif char == ">":
                    state = "data"
            elif state == "text of":  # the text of a RAWTEXT, RCDATA or script element
                if mark:
                    if raw in _RCDATA:
                        self.land(index, "text")
                    else:
                        self.land(index, "raw", "script!" if sticky else raw)
                elif raw == "script" and markup.startswith("<!--", index):
                    sticky = True
                elif char == "<" and not sticky and self.closes(index, raw):
                    state = "data"
                    continue
            index += 1
        if state not in {"data", "text of", "bogus"} and markup:
            # The text ends inside a tag (an unclosed quote or `<`): at the end of the input
            # browsers drop such a tag while other parsers keep it, so where a value would land
            # is a guess. Refused rather than guessed.
            self.problems.append(
                (
                    start,
                    "the template ends inside a tag (an unclosed quote or '<'); close the tag",
                )
            )

    def tag_end(self, tag: str, start: int, *, closing: bool) -> tuple[str, str, bool]:
        """The state after a tag: data, or the text of an element that switches the tokenizer."""
        if closing:
            return "data", "", False
        if tag in _REFUSED_ELEMENTS:
            self.problems.append(
                (start, f"<{tag}> is not supported in a template: {_REFUSED_ELEMENTS[tag]}")
            )
        if tag in _RAW_TEXT or tag in _RCDATA:
            return "text of", tag, tag == "plaintext"
        return "data", "", False

    def closes(self, index: int, tag: str) -> bool:
        markup = self.markup
        end = index + 2 + len(tag)
        return (
            markup.startswith("</", index)
            and markup[index + 2 : end].lower() == tag
            and (end == len(markup) or markup[end] in _SPACE or markup[end] in "/>")
        )

    def comment(self, begin: int, opened: int) -> int:
        """`begin` is just after '<!--'; the index after the comment (its longest reading)."""
        markup = self.markup
        end = markup.find("-->", begin)
        bang = markup.find("--!>", begin)
        abrupt = markup.startswith((">", "->"), begin)
        if abrupt or (bang != -1 and (end == -1 or bang < end)):
            self.problems.append((opened, _COMMENT))
        stop = len(markup) if end == -1 else end + 3
        for index in range(begin, stop):
            self.land(index, "comment")
        return stop
