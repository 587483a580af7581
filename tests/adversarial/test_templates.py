"""Notification templates against people who type markup into their names and mailbox rows.

Every value in a notification comes from someone the guardrail does not trust: the mailbox's
name and address are what the user typed into their own row, the owner's and initiator's names
come from the directory, the organization's name from the policy. Each is tried in every value
with the built-in template and with valid admin templates: a value may change the text, never
the markup. Admin templates that would put a value somewhere escaping does not protect, or that
reach past the sandbox, are refused with their location.
"""

from __future__ import annotations

import html
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guardrails.engine import Decision, Outcome, Violation
from guardrails.mailbox import Column
from guardrails.policy import PolicyError, parse_policy
from guardrails.policy.model import TEMPLATE_FIELDS, Notifications
from guardrails.render import render

MAILBOX_ID = "5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01"
CORRELATION_ID = "9d3c1c4e-2f0a-4b7e-9d55-0c2f8e1a7b10"
ORG = "00aa00aa-bb11-cc22-dd33-44ee44ee44ee"
SENDER = "guardrails@contoso.com"

# Values an attacker types into their name or mailbox row.
PAYLOADS = [
    '"><script>alert(1)</script>',
    "' onmouseover='alert(1)' x='",
    '" onmouseover="alert(1)" x="',
    "javascript:alert(1)",
    "<img src=x onerror=alert(1)>",
    "{{7*7}}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% raw %}{{ owner_name }}{% endraw %}",
    "{% for x in range(99999999) %}x{% endfor %}",
    "$owner_name ${mailbox_id}",
    "&lt;script&gt; &amp; &#x3C;",
    "</p></body></html><form action=https://evil.example>",
    "<!-- ",
    "]]><![CDATA[",
    "`backtick` =equals /slash",
]
# Fields an attacker controls (directly, or through the directory or the policy's author).
ATTACKER_FIELDS = ["owner_name", "initiator", "mailbox_name", "organization_name", "mailbox_email"]

ADMIN_TEMPLATE = """\
<html><body>
<p title="{{ owner_name }} / {{ initiator }}">Hello {{ owner_name|default("there", true) }},</p>
<img alt="{{ mailbox_name }}" src="https://contoso.example/logo.png">
<p>{{ action }} Mailbox {{ mailbox_name }} ({{ mailbox_email }}), changed by {{ initiator }}
in {{ organization_name }}. Owner: {{ owner_email }}. Id {{ mailbox_id }}.</p>
{{ violations }}
<p aria-label='{{ organization_name|upper }}'>{% raw %}{{ literal }}{% endraw %} {# note #}</p>
<textarea>{{ mailbox_name }}</textarea><title>{{ owner_name|truncate(100) }}</title>
<p>Reference: {{ correlation_id }}</p>
</body></html>
"""
ADMIN_SUBJECT = "Mailbox {{ mailbox_name }} of {{ owner_name|trim }} ({{ organization_name }})"


def decision(*, notify_owner: bool = True) -> Decision:
    violation = Violation(
        rule="email_address",
        column=Column.EMAIL,
        actual="ceo@contoso.com",
        expected="adele@contoso.com",
        enforced=True,
        message="changed",
    )
    return Decision(
        Outcome.VIOLATION,
        "Reverting",
        mailbox_id=MAILBOX_ID,
        correlation_id=CORRELATION_ID,
        violations=(violation,),
        patch={Column.EMAIL: "adele@contoso.com"},
        notify_owner=notify_owner,
    )


def _render(settings: Notifications, **values: Any) -> tuple[str, str]:
    arguments: dict[str, Any] = {
        "owner_name": "Adele Vance",
        "owner_email": "adele@contoso.com",
        "initiator": "Adele Vance",
        "organization_name": "Contoso",
        "mailbox_name": "Adele's mailbox",
        "wrote": True,
    }
    arguments.update(values)
    return render(decision(), settings, **arguments)


class _Structure(HTMLParser):
    """The markup as an independent parser sees it: tags, attributes, text, comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[Any, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + data)
        else:
            self.events.append(("data", data))

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("decl", decl))

    def unknown_decl(self, data: str) -> None:
        self.events.append(("unknown", data))

    def handle_pi(self, data: str) -> None:
        self.events.append(("pi", data))


def structure(markup: str, value: str, stand_in: str) -> list[tuple[Any, ...]]:
    """The parsed markup with every (unescaped) occurrence of `value` replaced by `stand_in`."""
    parser = _Structure()
    parser.feed(markup)
    parser.close()

    def swap(item: Any) -> Any:
        if isinstance(item, str):
            # The admin templates also show values through |upper and |trim.
            for form in (value, value.upper(), value.strip()):
                item = item.replace(form, stand_in)
            return item
        if isinstance(item, tuple):
            return tuple(swap(part) for part in item)
        return item

    return [swap(event) for event in parser.events]


# --- values the attacker types: text, never markup -----------------------------------------------


@pytest.mark.parametrize("template", [None, ADMIN_TEMPLATE], ids=["built-in", "admin"])
@pytest.mark.parametrize("field", ATTACKER_FIELDS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_value_changes_the_text_never_the_markup(
    template: str | None, field: str, payload: str
) -> None:
    settings = Notifications(sender=SENDER, template=template)
    stand_in = "Q" * 7
    _, hostile = _render(settings, **{field: payload})
    _, benign = _render(settings, **{field: stand_in})
    assert structure(hostile, payload, stand_in) == structure(benign, stand_in, stand_in)
    if any(c in payload for c in "<>\"'&"):
        assert payload not in hostile
    assert "49" not in hostile  # {{7*7}} is text, not an expression


@pytest.mark.parametrize("field", ATTACKER_FIELDS)
def test_template_syntax_in_a_value_is_rendered_literally(field: str) -> None:
    settings = Notifications(sender=SENDER, template=ADMIN_TEMPLATE, subject=ADMIN_SUBJECT)
    subject, body = _render(settings, **{field: "{{7*7}} {% raw %}x{% endraw %}"})
    if field in {"owner_name", "mailbox_name", "organization_name"}:
        assert "{{7*7}} {% raw %}x{% endraw %}" in subject
    assert "{{7*7}} {% raw %}x{% endraw %}" in body
    assert "49" not in body + subject


@pytest.mark.parametrize(
    "breaker",
    [
        "\n",
        "\r\n",
        "\r",
        "\u2028",
        "\u2029",
        "\x85",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1d",
        "\x1e",
        "\x00",
    ],
)
def test_the_subject_is_one_line_whatever_the_values(breaker: str) -> None:
    settings = Notifications(sender=SENDER, subject=ADMIN_SUBJECT)
    value = f"Adele{breaker}Bcc: attacker@evil.example{breaker}{breaker}"
    subject, _ = _render(settings, owner_name=value, mailbox_name=value, organization_name=value)
    assert subject.isprintable(), repr(subject)
    assert subject == (
        "Mailbox Adele Bcc: attacker@evil.example of Adele Bcc: attacker@evil.example "
        "(Adele Bcc: attacker@evil.example )"
    )


def test_the_subject_is_plain_text_not_escaped() -> None:
    settings = Notifications(sender=SENDER, subject=ADMIN_SUBJECT + " US$5 & <more>")
    subject, _ = _render(settings, owner_name="O'Brien <ob@x>", mailbox_name="a&b")
    assert subject == "Mailbox a&b of O'Brien <ob@x> (Contoso) US$5 & <more>"


def test_an_unknown_mailbox_name_is_your_mailbox_never_the_id() -> None:
    body_only = Notifications(sender=SENDER, template="<p>{{ mailbox_name }}</p>")
    _, body = _render(body_only, mailbox_name=None)
    assert body == "<p>your mailbox</p>"
    subject, body = _render(
        Notifications(sender=SENDER, subject="{{ mailbox_name }}"), mailbox_name=""
    )
    assert subject == "your mailbox"
    assert MAILBOX_ID not in body  # the built-in template does not fall back to the id either


def test_the_mailbox_email_is_the_address_on_the_row() -> None:
    settings = Notifications(sender=SENDER, template="<p>{{ mailbox_email }}</p>")
    _, body = _render(settings)  # the revert wrote the previous address back
    assert body == "<p>adele@contoso.com</p>"
    _, body = _render(settings, mailbox_email="shared@contoso.com")
    assert body == "<p>shared@contoso.com</p>"


def test_violations_are_html_and_their_values_are_escaped() -> None:
    hostile = Violation(
        rule="email_address",
        column=Column.EMAIL,
        actual='<script>alert("x")</script>@evil.example',
        expected="adele@contoso.com",
        enforced=True,
        message="changed",
    )
    settings = Notifications(sender=SENDER, template="<div>{{ violations }}</div>")
    _, body = render(
        Decision(
            Outcome.VIOLATION,
            "Reverting",
            mailbox_id=MAILBOX_ID,
            violations=(hostile,),
            patch={Column.EMAIL: "adele@contoso.com"},
        ),
        settings,
        owner_name=None,
        owner_email=None,
        initiator=None,
        organization_name=None,
        mailbox_name=None,
        wrote=True,
    )
    assert body.startswith("<div><ul><li><b>")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;@evil.example" in body
    assert "<script>" not in body


def test_lone_surrogates_in_values_become_replacement_characters() -> None:
    settings = Notifications(sender=SENDER, template=ADMIN_TEMPLATE, subject=ADMIN_SUBJECT)
    subject, body = _render(settings, owner_name="A\ud800B", mailbox_name="\udc80")
    subject.encode("utf-8")
    body.encode("utf-8")
    assert "A\ufffdB" in body and "A\ufffdB" in subject


# --- admin templates that are refused, with where -------------------------------------------------

# (template, line, column inside the template, fragment of the message)
REFUSED = [
    ("<a title={{ owner_name }}>x</a>", 1, 10, "unquoted value of the attribute title"),
    ("<a title=x{{ owner_name }}>x</a>", 1, 11, "unquoted value of the attribute title"),
    ("<a\ntitle=\n{{ owner_name }}>", 3, 1, "unquoted value of the attribute title"),
    ('<a href="{{ mailbox_name }}">x</a>', 1, 10, "URL attribute href"),
    ('<a HREF = "{{ mailbox_name }}">x</a>', 1, 12, "URL attribute href"),
    ("<form action='{{ initiator }}'></form>", 1, 15, "URL attribute action"),
    ('<video poster="{{ initiator }}"></video>', 1, 16, "URL attribute poster"),
    ('<table background="{{ initiator }}"></table>', 1, 20, "URL attribute background"),
    ('<blockquote cite="{{ initiator }}"></blockquote>', 1, 19, "URL attribute cite"),
    ('<object data="{{ initiator }}"></object>', 1, 15, "URL attribute data"),
    ('<iframe srcdoc="{{ owner_name }}"></iframe>', 1, 17, "is in the attribute srcdoc"),
    ('<p onclick="{{ owner_name }}">x</p>', 1, 13, "event-handler attribute onclick"),
    ('<p ONCLICK="{{ owner_name }}">x</p>', 1, 13, "event-handler attribute onclick"),
    ('<p style="{{ owner_name }}">x</p>', 1, 11, "in a style attribute"),
    ("<script>{{ owner_name }}</script>", 1, 9, "inside a <script> element"),
    ("<SCRIPT type=x>\n{{ owner_name }}</script>", 2, 1, "inside a <script> element"),
    ("<style>{{ owner_name }}</style>", 1, 8, "inside a <style> element"),
    ("<svg><style>{{ owner_name }}</style></svg>", 1, 1, "<svg> is not supported in a template"),
    ("<svg><text>{{ owner_name }}</text></svg>", 1, 1, "<svg> is not supported in a template"),
    ("<p>x</p><MATH><mi>{{ owner_name }}</mi></MATH>", 1, 9, "<math> is not supported"),
    ("<noscript>{{ owner_name }}</noscript>", 1, 1, "<noscript> is not supported"),
    ('<textarea><a title="</textarea><a href={{ mailbox_name }}>">', 1, 40, "URL attribute href"),
    ('<title><p title="</title ><p onclick={{ initiator }}>">', 1, 38, "event-handler attribute"),
    ("<script><!--<script></script>{{ owner_name }}</script>", 1, 30, "inside a <script>"),
    ('<!--><a onclick="-->{{ owner_name }}">', 1, 1, "write comments as <!-- text -->"),
    ("<!---><p>{{ owner_name }}</p>-->", 1, 1, "write comments as <!-- text -->"),
    ("<!-- a --!> <a href={{ owner_name }}>", 1, 1, "write comments as <!-- text -->"),
    ("<script></p>{{ owner_name }}", 1, 13, "inside a <script> element"),
    ("<xmp>{{ owner_name }}</xmp>", 1, 6, "inside a <xmp> element"),
    ("<{{ owner_name }}>", 1, 2, "in a tag name"),
    ("</{{ owner_name }}>", 1, 3, "in a tag name"),
    ("<p {{ owner_name }}>", 1, 4, "in an attribute name"),
    ("<p data-{{ owner_name }}=x>", 1, 9, "in an attribute name"),
    ('<p title="a"{{ owner_name }}>', 1, 13, "in an attribute name"),
    ("<!-- {{ owner_name }} -->", 1, 6, "inside an HTML comment"),
    ("<!DOCTYPE {{ owner_name }}>", 1, 11, "inside a <!...> declaration"),
    ("<?xml {{ owner_name }}?>", 1, 7, "inside a <!...> declaration"),
    ("<p>{{ owner_name|safe }}</p>", 1, 4, "the filter |safe is not allowed"),
    ("<p>{{ owner_name|e|safe }}</p>", 1, 4, "the filter |safe is not allowed"),
    ("<p>{{ owner_name|urlize }}</p>", 1, 4, "the filter |urlize is not allowed"),
    ("<p>{{ owner_name|center(999999999) }}</p>", 1, 4, "the filter |center is not allowed"),
    ("<p>{{ owner_name|xmlattr }}</p>", 1, 4, "the filter |xmlattr is not allowed"),
    ("<p>{{ owner_name|truncate(owner_email) }}</p>", 1, 4, "only placeholders"),
    ("<p>{{ violations|safe }}</p>", 1, 4, "the filter |safe is not allowed"),
    ("<p>{{ violations|upper }}</p>", 1, 4, "{{ violations }} is HTML and takes no filters"),
    ("{% autoescape false %}{{ owner_name }}{% endautoescape %}", 1, 1, "statements"),
    ("{% filter safe %}{{ owner_name }}{% endfilter %}", 1, 1, "statements"),
    ("{% if owner_name %}<a {% endif %}title={{ owner_name }}>", 1, 1, "statements"),
    ("x\n{% set owner_name = '<b>' %}", 2, 1, "statements"),
    ("{% for i in range(10) %}x{% endfor %}", 1, 1, "statements"),
    ('{% include "x.html" %}', 1, 1, "statements"),
    ('{% extends "x.html" %}', 1, 1, "statements"),
    ("{% macro m() %}{% endmacro %}", 1, 1, "statements"),
    ("{{ owner_name.__class__ }}", 1, 1, "only placeholders"),
    ("{{ owner_name['__class__'] }}", 1, 1, "only placeholders"),
    ("{{ cycler.__init__.__globals__ }}", 1, 1, "only placeholders"),
    ("{{ lipsum.__globals__['os'].popen('id').read() }}", 1, 1, "only placeholders"),
    ("{{ self.__init__.__globals__ }}", 1, 1, "only placeholders"),
    ("{{ owner_name.upper() }}", 1, 1, "only placeholders"),
    ("{{ 'x' * 999999999 }}", 1, 1, "only placeholders"),
    ("{{ 9 ** 9 ** 9 }}", 1, 1, "only placeholders"),
    ("{{ owner_name ~ initiator }}", 1, 1, "only placeholders"),
    ("{{ owner_name if initiator else action }}", 1, 1, "only placeholders"),
    ("{{ range(10) }}", 1, 1, "only placeholders"),
    ("{{ owner_name is defined }}", 1, 1, "only placeholders"),
    ("<p>Hello {{ owner }}</p>", 1, 10, "unknown placeholder {{ owner }}"),
    ("<p>\n\n  {{ owner_nam }}</p>", 3, 3, "did you mean {{ owner_name }}?"),
    ("<p>Hello {{ owner_name }</p>", 1, 1, "template syntax error"),
    ("<p>\n{{ owner_name }}\n{% endif %}</p>", 3, 1, "template syntax error"),
    ("<p>Hello $owner_name,</p>", 1, 10, "$owner_name is the old placeholder syntax"),
    ("<p>Hello ${mailbox_name},</p>", 1, 10, "write {{ mailbox_name }}"),
    ("<p>{{ owner_name }} and $violations</p>", 1, 25, "write {{ violations }}"),
    ('<p title="{{ violations }}">x</p>', 1, 11, "is an HTML list and must stand in text"),
]


@pytest.mark.parametrize(("template", "line", "column", "fragment"), REFUSED)
def test_an_unsafe_admin_template_is_refused_with_its_place(
    template: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Notifications(sender=SENDER, template=template)
    (error,) = caught.value.errors()
    assert error["loc"] == ("template",)
    assert fragment in error["msg"], error["msg"]
    assert f"(template line {line}, column {column})" in error["msg"], error["msg"]


@pytest.mark.parametrize(
    ("subject", "fragment"),
    [
        ("Changes: {{ violations }}", "cannot go in the subject"),
        ("Mailbox $mailbox_name", "write {{ mailbox_name }}"),
        ("{{ owner_name|safe }}", "the filter |safe is not allowed"),
        ("{{ owner_name.__class__ }}", "only placeholders"),
        ("{% if owner_name %}x{% endif %}", "statements"),
        ("{{ nobody }}", "unknown placeholder {{ nobody }}"),
        ("{{ owner_name", "template syntax error"),
        ("s" * 256, "at most 255 characters"),
    ],
)
def test_an_unsafe_subject_is_refused(subject: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Notifications(sender=SENDER, subject=subject)
    (error,) = caught.value.errors()
    assert error["loc"] == ("subject",)
    assert fragment in error["msg"], error["msg"]


def test_a_template_problem_is_located_in_the_policy_file() -> None:
    text = (
        f"version: 1\norganization: {{id: {ORG}}}\nrules:\n  email_address: {{}}\n"
        "notifications:\n  sender: guardrails@contoso.com\n  template: |\n"
        "    <p>Hello {{ owner_name }},</p>\n"
        '      <p>See <a\n        href="{{ mailbox_name }}">here</a></p>\n'
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    (issue,) = caught.value.issues
    # template line 3, column 11 is YAML line 10, column 15 (the block is indented by 4)
    assert (issue.line, issue.column) == (10, 15)
    assert "(template line 3, column 11)" in issue.message
    assert issue.message.startswith("notifications.template: {{ mailbox_name }} is in the URL")


@pytest.mark.parametrize(
    "template",
    [
        ADMIN_TEMPLATE,
        "<p>US$5 is $5 and $$ stays</p>",
        "<p>{{ owner_name }}</p>",
        "plain text, no markup {{ action }}",
        "<a title='{{ owner_name }}' href=\"https://contoso.example/help\">help</a>",
        '<img alt="{{ mailbox_name|truncate(20, true, "...") }}" src="cid:logo">',
        "<p>{{ owner_name|default('colleague', true)|title }}</p>",
        "<p>{{- owner_name -}}</p>",
        "<p>{% raw %}{{ not_a_placeholder }}{% endraw %}</p>",
        "<p>{{ '{{ literal }}' }}</p>",
        "<p>1 < 2 and a <b>bold</b> {{ initiator }}</p>",
        "<title>{{ owner_name }}</title><textarea>{{ mailbox_name }}</textarea>",
        "<p>a <!-- note --> {{ owner_name }} <!----> b</p>",
        "<style>p { color: red }</style><p>{{ owner_name }}</p>",
        "<script></script ><p>{{ owner_name }}</p>",
        "<style>a</style x>{{ owner_name }}<style>",
        "<p>{{ owner_name }}</p><!-- never closed",
        "<p>{{ mailbox_email }}</p>",
    ],
)
def test_valid_admin_templates_are_accepted(template: str) -> None:
    settings = Notifications(sender=SENDER, template=template)
    _, body = _render(settings, owner_name="<b>x</b>")
    assert "<b>x</b>" not in body


def test_every_documented_placeholder_is_accepted_in_the_template_and_subject() -> None:
    assert "mailbox_email" in TEMPLATE_FIELDS and "mailbox_name" in TEMPLATE_FIELDS
    template = " ".join(f"<p>{{{{ {name} }}}}</p>" for name in sorted(TEMPLATE_FIELDS))
    subject = " ".join(f"{{{{ {name} }}}}" for name in sorted(TEMPLATE_FIELDS - {"violations"}))
    settings = Notifications(sender=SENDER, template=template, subject=subject)
    subject_text, body = _render(settings, mailbox_email="m@contoso.com")
    assert "{{" not in body and "{{" not in subject_text
    assert "Adele Vance" in body and CORRELATION_ID in body and MAILBOX_ID in body


# --- the sandbox, behind the validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "{{ value.__class__.__mro__ }}",
        "{{ value.__init__.__globals__ }}",
        "{{ value.__class__.__base__.__subclasses__() }}",
        "{{ value.__reduce_ex__(2) }}",
        "{{ value.format.__globals__ }}",
    ],
)
def test_the_sandbox_blocks_python_internals_even_without_the_validation(expression: str) -> None:
    from jinja2.exceptions import SecurityError, UndefinedError
    from jinja2.utils import Cycler

    from guardrails.render import templates

    for environment in (templates(subject=False), templates(subject=True)):
        for value in ("text", Cycler("a", "b")):
            with pytest.raises((SecurityError, UndefinedError)):
                environment.from_string(expression).render(value=value)


def test_the_environments_offer_no_globals_and_no_unsafe_filters() -> None:
    from jinja2.exceptions import SecurityError, UndefinedError

    from guardrails.render import templates

    body, subject = templates(subject=False), templates(subject=True)
    for environment in (body, subject):
        assert environment.globals == {}
        assert not {"safe", "urlize", "xmlattr", "tojson", "format", "center"} & set(
            environment.filters
        )
        with pytest.raises((SecurityError, UndefinedError)):
            environment.from_string("{{ cycler.__init__.__globals__ }}").render()
    assert body.from_string("{{ v }}").render(v="<b>") == "&lt;b&gt;"
    assert subject.from_string("{{ v }}").render(v="<b>") == "<b>"


def test_rendering_never_uses_a_template_that_skipped_validation() -> None:
    unchecked = Notifications.model_construct(
        sender=SENDER, template="<p>{{ owner_name|safe }}</p>", subject="x"
    )
    with pytest.raises(ValueError, match=re.escape("the filter |safe is not allowed")):
        _render(unchecked, owner_name="<script>alert(1)</script>")


def _count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The text of every template compiled from now on (each compile made slow enough for
    messages arriving together to overlap)."""
    from guardrails.render import templates

    compiled: list[str] = []
    for environment in (templates(subject=False), templates(subject=True)):
        original = environment.from_string

        def counting(source: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            compiled.append(str(source))
            time.sleep(0.02)
            return _original(source, *args, **kwargs)

        monkeypatch.setattr(environment, "from_string", counting)
    return compiled


def test_a_template_is_checked_when_the_policy_is_read_and_compiled_once_when_first_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = _count_compiles(monkeypatch)
    settings = Notifications(
        sender=SENDER, template="<p>{{ owner_name }} once</p>", subject="{{ owner_name }} once"
    )
    assert compiled == []  # checked only: a policy that never notifies never compiles
    for _ in range(5):
        _render(settings)
    assert sorted(compiled) == ["<p>{{ owner_name }} once</p>", "{{ owner_name }} once"]
    again = Notifications(
        sender=SENDER, template="<p>{{ owner_name }} once</p>", subject="{{ owner_name }} once"
    )
    _render(again)  # another policy with the same texts: compiled already
    assert len(compiled) == 2


def test_messages_rendering_a_template_together_compile_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = _count_compiles(monkeypatch)
    settings = Notifications(
        sender=SENDER, template="<p>{{ owner_name }} together</p>", subject="{{ owner_name }} 8"
    )
    start = threading.Barrier(8)

    def first_message() -> str:
        start.wait()
        return _render(settings)[1]

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: first_message(), range(8)))
    assert sorted(compiled) == ["<p>{{ owner_name }} together</p>", "{{ owner_name }} 8"]
    assert len(set(bodies)) == 1 and "Adele Vance" in bodies[0]


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters="{"), max_size=60))
def test_text_without_a_brace_reads_as_jinja_reads_it(text: str) -> None:
    """The check reads text holding no '{' (no Jinja delimiter) without Jinja: the same
    skeleton as Jinja's lexer gives, and nothing in it for Jinja's parser to find."""
    from jinja2 import nodes

    from guardrails.render import _newlines, _skeleton, _text_skeleton, templates

    source = _newlines(text)
    for environment in (templates(subject=False), templates(subject=True)):
        assert _text_skeleton(source) == _skeleton(environment, source)
        tree = environment.parse(source)
        assert all(
            isinstance(child, nodes.TemplateData)
            for output in tree.find_all(nodes.Output)
            for child in output.nodes
        )


def test_the_built_in_template_passes_its_own_checks() -> None:
    from guardrails.render import DEFAULT_TEMPLATE, check_template

    check_template(DEFAULT_TEMPLATE)
    assert "$" not in DEFAULT_TEMPLATE and "{{ owner_name" in DEFAULT_TEMPLATE


# --- any template the checks accept keeps values out of the markup (property) ------------------

PIECES = [
    "<a ", "<p>", "</p>", "<img ", "<svg>", "</svg>",
    "<script>", "</script>", "<style>", "</style>", "<!--", "-->", "<!doctype html>", "<",
    "title=", "alt=", "href=", "onclick=", "style=", "data-x=", '"', "'", ">", "/>", " ", "/",
    "=", "&amp;", "text", "\n", "{{ owner_name }}", "{{ mailbox_name|upper }}", "{{ initiator }}",
]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24))
def test_any_accepted_template_keeps_values_out_of_the_markup(pieces: list[str]) -> None:
    template = "".join(pieces)
    try:
        settings = Notifications(sender=SENDER, template=template)
    except ValidationError:
        return  # refused: nothing to render
    payload = "\"'<>&/ =`X"
    stand_in = "QQQQQQQ"
    values = {"owner_name": payload, "mailbox_name": payload, "initiator": payload}
    _, hostile = _render(settings, **values)
    _, benign = _render(settings, **dict.fromkeys(values, stand_in))
    assert structure(hostile, payload, stand_in) == structure(benign, stand_in, stand_in)
    if "{{" in template:
        assert html.escape(payload) in hostile


def test_a_template_ending_inside_a_tag_is_refused() -> None:
    """Found by the property above: `<a title="<p><a {{ owner_name }}<p>` ends inside a quoted
    value, where browsers drop the tag and other parsers keep it; where a value lands would be
    a guess."""
    for template in ('<a title="<p><a {{ owner_name }}<p>', "<p>{{ owner_name }}</p><a href", "<"):
        with pytest.raises(ValidationError, match="ends inside a tag"):
            Notifications(sender=SENDER, template=template)
