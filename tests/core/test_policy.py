"""Policy validation: every problem at once, each as FILE:LINE:COLUMN: message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from guardrails.cli import main
from guardrails.mailbox import Column
from guardrails.policy import (
    ORGANIZATION_DEFAULT,
    Mode,
    PolicyError,
    PolicyIssue,
    Scope,
    load_policy,
    parse_policy,
)
from guardrails.policy.loader import policy_schema

from .conftest import EXAMPLE_POLICY, ORG

MANY_MISTAKES = """\
# A policy with many mistakes.
version: 1
mode: enforce
rules:
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: forward_mailbox
    appointments_contacts_tasks: 7
    incomming_email: none
  email_address:
    allowed_domains: [contoso.com, "bad domain", fabrikam.com]
exemptions:
  mailboxes:
    - 00aa00aa-bb11-cc22-dd33-44ee44ee44ee
    - not-a-guid
  users: [not-an-email, admin@contoso.com]
notifications:
  enabled: true
  sender: nobody
  template: "<p>Hello {{ owner_nam }}</p>"
  throttle:
    window: 5 minutes
  throttle_extra: 1
mode: audit
"""
# (line, column, fragments the message must contain), in file order.
MANY_MISTAKES_ISSUES = [
    (2, 1, ["'organization' is required"]),
    (7, 21, ["outgoing_email", "'forward_mailbox' is not a delivery method", "server_side_sync"]),
    (8, 34, ["appointments_contacts_tasks", "7 is not a delivery method", "server_side_sync (1)"]),
    (9, 5, ["unknown key 'incomming_email'", "did you mean 'incoming_email'?"]),
    (11, 36, ["allowed_domains[1]", "'bad domain' is not a domain"]),
    (15, 7, ["exemptions.mailboxes[1]", "'not-a-guid' is not a GUID"]),
    (16, 11, ["exemptions.users[0]", "'not-an-email'"]),
    (19, 11, ["notifications.sender", "'nobody' is not an email address"]),
    (20, 13, ["notifications.template", "{{ owner_nam }}", "{{ owner_name }}"]),
    (22, 13, ["notifications.throttle.window", "'5 minutes' is not a duration"]),
    (23, 3, ["unknown key 'throttle_extra'", "did you mean 'throttle'?"]),
    (24, 1, ["'mode' is set twice"]),
]

MISSING_RULES = """\
version: 2
organization:
  name: Contoso
rulez:
  delivery_methods: {incoming_email: server_side_sync}
scope: everything
"""
MISSING_RULES_ISSUES = [
    (1, 1, ["'rules' is required"]),
    (1, 10, ["version", "1"]),
    (3, 3, ["'id' is required under organization"]),
    (4, 1, ["unknown key 'rulez'", "did you mean 'rules'?"]),
    (6, 8, ["scope", "user_mailboxes", "queue_mailboxes", "all"]),
]

MINIMAL = f"version: 1\norganization:\n  id: {ORG}\nrules:\n"


def _issues(text: str, filename: str = "policy.yaml") -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, filename)
    return caught.value.issues


def _check(issues: list[PolicyIssue], expected: list[tuple[int, int, list[str]]]) -> None:
    assert [(i.line, i.column) for i in issues] == [(line, col) for line, col, _ in expected]
    for issue, (_, _, fragments) in zip(issues, expected, strict=True):
        for fragment in fragments:
            assert fragment in issue.message, (fragment, issue.message)


# --- the example and valid policies --------------------------------------------------------------


def test_example_policy_is_valid() -> None:
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.version == 1
    assert policy.organization.id == ORG
    assert policy.organization.name == "Contoso"
    assert policy.mode is Mode.ENFORCE
    assert policy.scope is Scope.USER_MAILBOXES
    assert policy.rules.delivery_methods is not None
    assert policy.rules.delivery_methods.expected() == {
        Column.INCOMING: 2,
        Column.OUTGOING: 2,
        Column.ACT: 1,
    }
    assert policy.rules.email_address is not None
    assert policy.rules.email_address.changes == "forbidden"
    assert policy.rules.server_profile is None
    assert policy.exemptions.security_roles == ("System Administrator",)
    assert policy.notifications.enabled is True
    assert policy.notifications.sender == "guardrails@contoso.com"
    assert policy.notifications.throttle.window_seconds == 3600


@pytest.mark.parametrize(
    ("value", "column", "number"),
    [
        ("server_side_sync", "incoming_email", 2),
        ("forward_mailbox", "incoming_email", 3),
        ("none", "incoming_email", 0),
        ("outlook", "outgoing_email", 1),
        ("0", "appointments_contacts_tasks", 0),
        ("server_side_sync", "appointments_contacts_tasks", 1),
        ("none", "appointments_contacts_tasks", 2),
        ("organization_default", "outgoing_email", ORGANIZATION_DEFAULT),
    ],
)
def test_delivery_values(value: str, column: str, number: int | str) -> None:
    policy = parse_policy(MINIMAL + f"  delivery_methods:\n    {column}: {value}\n")
    assert policy.rules.delivery_methods is not None
    assert getattr(policy.rules.delivery_methods, column) == number


@pytest.mark.parametrize(
    ("window", "seconds"), [("30m", 1800), ("1h", 3600), ("1d", 86400), ("45s", 45), ("90", 90)]
)
def test_durations(window: str, seconds: int) -> None:
    text = MINIMAL + "  email_address: {}\nnotifications:\n  enabled: false\n"
    policy = parse_policy(text + f"  throttle:\n    window: {window}\n")
    assert policy.notifications.throttle.window_seconds == seconds


def test_normalizations() -> None:
    text = (
        f"version: 1\norganization: {{id: {ORG.upper()}}}\nrules:\n"
        "  email_address: {allowed_domains: [Contoso.COM, .fabrikam.com]}\n"
        f"  server_profile: {{expected: {ORG.upper()}}}\n"
        f"exemptions: {{users: [Admin@Contoso.com, {ORG.upper()}], mailboxes: [{ORG.upper()}]}}\n"
    )
    policy = parse_policy(text)
    assert policy.organization.id == ORG
    assert policy.rules.email_address is not None
    assert policy.rules.email_address.allowed_domains == ("contoso.com", "fabrikam.com")
    assert policy.rules.server_profile is not None
    assert policy.rules.server_profile.expected == ORG
    assert policy.exemptions.users == ("admin@contoso.com", ORG)
    assert policy.exemptions.mailboxes == (ORG,)


def test_policy_file_with_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE_POLICY.read_bytes())
    assert load_policy(path) == load_policy(EXAMPLE_POLICY)


# --- every mistake at once, with its line and column ---------------------------------------------


def test_every_mistake_is_reported_with_line_and_column() -> None:
    issues = _issues(MANY_MISTAKES, "many.yaml")
    _check(issues, MANY_MISTAKES_ISSUES)
    assert all(issue.file == "many.yaml" for issue in issues)


def test_missing_required_keys_and_typos() -> None:
    _check(_issues(MISSING_RULES), MISSING_RULES_ISSUES)


def test_error_text_is_file_line_column_message(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(MANY_MISTAKES, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == len(MANY_MISTAKES_ISSUES)
    for text, (line, column, _) in zip(lines, MANY_MISTAKES_ISSUES, strict=True):
        assert text.startswith(f"{path}:{line}:{column}: ")
    assert str(caught.value.issues[0]) == lines[0]


def test_issue_string_form() -> None:
    issue = PolicyIssue(3, 7, "organization.id: bad", "p.yaml")
    assert str(issue) == "p.yaml:3:7: organization.id: bad"


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        (MINIMAL + "  email_address: {}\nmode: enforced\n", 6, 7, "'enforce' or 'audit'"),
        (MINIMAL + "  email_address:\n    changes: sometimes\n", 6, 14, "'forbidden'"),
        (MINIMAL + "  server_profile:\n    expected: abc\n", 6, 15, "neither organization_default"),
        (MINIMAL + "  email_address: {}\nnotifications:\n  enabled: true\n", 7, 3, "no sender"),
        (MINIMAL + "  email_address: {}\nnotifications: {enabled: false, subject: '$5 {{ p }}'}\n",
         6, 42, "unknown placeholder {{ p }}"),
        (MINIMAL + "  {}\n", 5, 3, "no rules"),
        (MINIMAL + "  delivery_methods:\n    incoming: server_side_sync\n", 6, 5,
         "did you mean 'incoming_email'?"),
        (MINIMAL + "  email_address: {}\n  email_adress: {}\n", 6, 3,
         "did you mean 'email_address'?"),
        (MINIMAL + "  email_address: {}\nexemptions:\n  mailboxes: [abc]\n", 7, 15, "GUID"),
        (MINIMAL + "  email_address: {}\nnotifications:\n  enabled: false\n"
         "  throttle: {max_per_mailbox: 0}\n", 8, 31, "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_single_mistakes(text: str, line: int, column: int, fragment: str) -> None:
    issues = _issues(text)
    assert [(i.line, i.column) for i in issues] == [(line, column)]
    assert fragment in issues[0].message


@pytest.mark.parametrize("value", ["true", "false", "yes", "on"])
def test_a_boolean_is_not_a_delivery_method(value: str) -> None:
    # `incoming_email: yes` must not silently mean 1 (Dynamics 365 for Outlook).
    issues = _issues(MINIMAL + f"  delivery_methods:\n    incoming_email: {value}\n")
    assert [(i.line, i.column) for i in issues] == [(6, 21)]
    assert "true/false" in issues[0].message


# --- limits: every number has a range, the file and the templates have a size -------------------

THROTTLE = MINIMAL + "  email_address: {}\nnotifications:\n  enabled: false\n  throttle:\n"


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("max_per_mailbox: 1001", "less than or equal to 1000"),
        ("max_per_mailbox: 0", "greater than or equal to 1"),
        ("window: 31d", "between 1 second and 30 days"),
        ("window: 2592001", "between 1 second and 30 days"),
        ("window: 0", "between 1 second and 30 days"),
        ("window: -5", "between 1 second and 30 days"),
        ("window: 1" + "0" * 400, "numbers in a policy have at most 20 digits"),
        ("window: 1:30", "'1:30' is not a duration"),
        ("window: ٣٠m", "is not a duration"),
        ("window: .inf", "'.inf' is a decimal number"),
    ],
)
def test_every_throttle_number_has_a_range(setting: str, fragment: str) -> None:
    issues = _issues(THROTTLE + f"    {setting}\n")
    assert [(i.line, i.column) for i in issues] == [(9, 5 + setting.index(":") + 2)]
    assert fragment in issues[0].message


@pytest.mark.parametrize(
    ("setting", "seconds"),
    [("window: 30d", 2_592_000), ("window: 2592000", 2_592_000), ("window: 1s", 1)],
)
def test_the_window_limits_are_inclusive(setting: str, seconds: int) -> None:
    policy = parse_policy(THROTTLE + f"    {setting}\n    max_per_mailbox: 1000\n")
    throttle = policy.notifications.throttle
    assert throttle.window_seconds == seconds and throttle.max_per_mailbox == 1000


def test_a_window_too_long_for_the_clock_is_refused_by_the_model_itself() -> None:
    # 10^400 s used to pass and raise OverflowError in the executor's monotonic-clock window.
    from pydantic import ValidationError

    from guardrails.policy.model import Throttle

    with pytest.raises(ValidationError, match="between 1 second and 30 days"):
        Throttle(window=10**400)
    with pytest.raises(ValidationError, match="between 1 second and 30 days"):
        Throttle(window=10**5000)  # more digits than int() will print


def test_the_largest_window_works_with_the_notification_throttle() -> None:
    from guardrails.clients.tables import MemoryTable
    from guardrails.state.throttle import SharedThrottle

    limits = parse_policy(THROTTLE + "    window: 30d\n").notifications.throttle
    throttle = SharedThrottle(
        MemoryTable("throttle"),
        limit=limits.max_per_mailbox,
        window=limits.window_seconds,
        clock=lambda: 0.0,
    )
    assert throttle.allow("mailbox")


def test_the_policy_file_has_a_size_limit(tmp_path: Path) -> None:
    example = EXAMPLE_POLICY.read_bytes()
    limit = 256 * 1024
    at_limit = tmp_path / "at-limit.yaml"
    at_limit.write_bytes(example + b"#" * (limit - len(example) - 1) + b"\n")
    assert load_policy(at_limit) == load_policy(EXAMPLE_POLICY)
    over = tmp_path / "over.yaml"
    over.write_bytes(example + b"#" * (limit - len(example)) + b"\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(over)
    assert [(i.line, i.column) for i in caught.value.issues] == [(1, 1)]
    assert "at most 256 KiB" in caught.value.issues[0].message
    with pytest.raises(PolicyError, match="at most 256 KiB"):
        parse_policy(over.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("!!str 123", "123"), ("2024-01-01", "2024-01-01"), ("'1:30'", "1:30"), ("1:30", "1:30")],
)
def test_text_stays_text(value: str, expected: str) -> None:
    # No dates or base-60 numbers: YAML 1.1 would turn these role names into other types.
    policy = parse_policy(
        MINIMAL + f"  email_address: {{}}\nexemptions:\n  security_roles: [{value}]\n"
    )
    assert policy.exemptions.security_roles == (expected,)


@pytest.mark.parametrize(
    ("notifications", "column", "fragment"),
    [
        ("{enabled: false, subject: '" + "s" * 256 + "'}", 42, "at most 255 characters"),
        ("{enabled: false, template: '" + "t" * 32_769 + "'}", 43, "at most 32768 characters"),
    ],
)
def test_subject_and_template_have_a_size_limit(
    notifications: str, column: int, fragment: str
) -> None:
    issues = _issues(MINIMAL + f"  email_address: {{}}\nnotifications: {notifications}\n")
    assert [(i.line, i.column) for i in issues] == [(6, column)]
    assert fragment in issues[0].message


def test_limits_are_in_the_schema() -> None:
    defs = policy_schema()["$defs"]
    throttle = defs["Throttle"]["properties"]
    assert throttle["max_per_mailbox"]["minimum"] == 1
    assert throttle["max_per_mailbox"]["maximum"] == 1000
    assert "30 days" in throttle["window"]["description"]
    notifications = defs["Notifications"]["properties"]
    assert notifications["subject"]["maxLength"] == 255
    assert notifications["template"]["anyOf"][0]["maxLength"] == 32_768


def test_the_schema_documents_every_placeholder() -> None:
    from guardrails.policy.model import TEMPLATE_FIELDS

    notifications = policy_schema()["$defs"]["Notifications"]["properties"]
    template = notifications["template"]["description"]
    subject = notifications["subject"]["description"]
    for name in TEMPLATE_FIELDS:
        assert f"{{{{ {name} }}}}" in template, name
    assert "{{ mailbox_email }}" in template and "your mailbox" in template
    assert "{{" in subject


# --- YAML problems, empty and non-mapping files --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (MINIMAL + "  email_address: {}\nmode: enforce\n  scope: all\n", 7, 8),
        (MINIMAL + "  email_address: {}\n\tmode: audit\n", 6, 1),
        (MINIMAL + "  email_address: {changes: forbidden\nmode: audit\n", 6, 5),
        (MINIMAL + "  email_address: {}\nmode: 'audit\n", 7, 1),
    ],
)
def test_yaml_syntax_error_is_one_issue_with_its_position(
    text: str, line: int, column: int
) -> None:
    issues = _issues(text, "broken.yaml")
    assert len(issues) == 1
    assert (issues[0].line, issues[0].column) == (line, column)
    assert issues[0].message.startswith("YAML: ")
    assert issues[0].file == "broken.yaml"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n"])
def test_empty_policy(text: str) -> None:
    issues = _issues(text)
    assert len(issues) == 1
    assert (issues[0].line, issues[0].column) == (1, 1)
    assert "empty" in issues[0].message


@pytest.mark.parametrize(
    ("text", "line"), [("- version\n- rules\n", 1), ("just text\n", 1), ("# c\n42\n", 2)]
)
def test_policy_that_is_not_a_mapping(text: str, line: int) -> None:
    issues = _issues(text)
    assert len(issues) == 1
    assert issues[0].line == line
    assert "mapping" in issues[0].message


def test_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")
    assert len(caught.value.issues) == 1
    assert "cannot read" in caught.value.issues[0].message
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("version: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyError) as caught:
        load_policy(latin1)
    assert "cannot read" in caught.value.issues[0].message


# --- the CLI: validate and schema ----------------------------------------------------------------


def test_cli_validate_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(EXAMPLE_POLICY)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "valid" in out
    assert "delivery_methods" in out
    assert "email_address" in out


def test_cli_validate_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MANY_MISTAKES, encoding="utf-8")
    assert main(["policy", "validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    for line, column, _ in MANY_MISTAKES_ISSUES:
        assert any(text.startswith(f"{path}:{line}:{column}: ") for text in lines), (line, column)
    assert f"{len(MANY_MISTAKES_ISSUES)} problem(s)" in err


@pytest.mark.parametrize("text", ["", "version: [\n"])
def test_cli_validate_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["policy", "validate", str(path)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"{path}:")
    assert "1 problem(s)" in err


def test_cli_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(tmp_path / "nope.yaml")]) == 1
    _, err = capsys.readouterr()
    assert "cannot read" in err


def _schema_from_cli(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["policy", "schema"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    schema = json.loads(out)
    assert isinstance(schema, dict)
    return schema


def _objects(schema: dict) -> list[tuple[str, dict]]:
    found = [("<root>", schema)]
    found += [(name, node) for name, node in schema.get("$defs", {}).items()]
    return [(name, node) for name, node in found if "properties" in node]


def test_cli_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema_from_cli(capsys)
    assert schema == policy_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"version", "organization", "rules"}
    assert set(schema["properties"]) == {
        "version",
        "organization",
        "mode",
        "scope",
        "rules",
        "exemptions",
        "notifications",
    }


def test_cli_schema_forbids_additional_properties(capsys: pytest.CaptureFixture[str]) -> None:
    objects = _objects(_schema_from_cli(capsys))
    assert len(objects) >= 8
    for name, node in objects:
        assert node.get("additionalProperties") is False, name


def test_cli_schema_has_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema_from_cli(capsys)
    defs = schema["$defs"]
    assert "organization" in defs["Organization"]["properties"]["id"]["description"].lower()
    assert "enforce" in schema["properties"]["mode"]["description"]
    assert "description" in schema["properties"]["scope"]
    delivery = defs["DeliveryMethodsRule"]["properties"]
    for field in ("incoming_email", "outgoing_email", "appointments_contacts_tasks"):
        assert "organization_default" in delivery[field]["description"]
    template = defs["Notifications"]["properties"]["template"]["description"]
    assert "owner_name" in template
    assert "escaped" in template
    described = [
        field
        for _, node in _objects(schema)
        for field, spec in node["properties"].items()
        if spec.get("description")
    ]
    assert len(described) >= 20


def test_schema_validates_the_example_policy(capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema_from_cli(capsys)
    data = yaml.safe_load(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "rulez": {}}, schema)
