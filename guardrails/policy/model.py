"""The policy, version 1: what admins write in YAML, validated before anything runs.

Field descriptions here are the documentation editors show (through `guardrails policy schema`),
so they are written for the admin, not for the developer.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guardrails.mailbox import DELIVERY_METHODS, Column

ORGANIZATION_DEFAULT = "organization_default"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_DURATION = re.compile(r"^([0-9]{1,9})\s*([smhd])\Z")

# Every number has a range, every text a size: a policy is input, and the function trusts it.
MAX_PER_MAILBOX = 1000
MAX_WINDOW_SECONDS = 30 * 86400
MAX_SUBJECT_LENGTH = 255
MAX_TEMPLATE_LENGTH = 32_768

# The placeholders a notification can use, as the admin reads them (schema and README).
PLACEHOLDERS: dict[str, str] = {
    "owner_name": "the mailbox owner's name from the directory (empty if unknown)",
    "owner_email": "the owner's primary email from the directory, where the mail goes",
    "mailbox_name": "the mailbox's name; 'your mailbox' (or 'the mailbox' when the owner is not "
    "told) if unknown, never the id",
    "mailbox_email": "the email address on the mailbox row (after a revert, the restored one; "
    "empty if unknown)",
    "mailbox_id": "the mailbox row's id",
    "initiator": "the name (or email) of whoever made the change (empty if unknown)",
    "organization_name": "organization.name from this policy, or 'your organization'",
    "action": "one sentence: the change was put back, or only found (audit mode)",
    "violations": "an HTML list of each forbidden change and what happened to it (template only, "
    "and only as text: not in an attribute, not with filters)",
    "correlation_id": "the Dataverse correlation id, for support",
}
TEMPLATE_FIELDS = frozenset(PLACEHOLDERS)
SUBJECT_FIELDS = TEMPLATE_FIELDS - {"violations"}
# Filters that only reshape text: none marks anything safe or builds markup.
TEMPLATE_FILTERS = (
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "truncate",
    "default",
    "escape",
)
# Attributes whose value is text for people: the only ones a value may stand in (quoted).
TEXT_ATTRIBUTES = (
    "title",
    "alt",
    "aria-label",
    "aria-description",
    "abbr",
    "label",
    "placeholder",
    "summary",
)


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class Scope(StrEnum):
    USER_MAILBOXES = "user_mailboxes"
    QUEUE_MAILBOXES = "queue_mailboxes"
    ALL = "all"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_guid(text: str) -> bool:
    return bool(_GUID.match(text))


def quoted(value: object, limit: int = 60) -> str:
    """A value for a message: quoted, shortened, with control characters spelled out."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "'" + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text) + "'"


def _guid(value: str) -> str:
    if not is_guid(value):
        raise ValueError(
            f"{quoted(value)} is not a GUID such as 00aa00aa-bb11-cc22-dd33-44ee44ee44ee"
        )
    return value.lower()


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{quoted(value)} is not an email address")
    return value


def _user(value: str) -> str:
    if not is_guid(value) and not _EMAIL.match(value):
        raise ValueError(f"{quoted(value)} is neither a systemuserid nor an email address")
    return value.lower()


def _domain(value: str) -> str:
    if "@" in value or "." not in value or " " in value:
        raise ValueError(f"{quoted(value)} is not a domain such as contoso.com")
    return value.lower().lstrip(".")


Guid = Annotated[str, AfterValidator(_guid)]
EmailAddress = Annotated[str, AfterValidator(_email)]
UserRef = Annotated[str, AfterValidator(_user)]
DomainName = Annotated[str, AfterValidator(_domain)]


class Organization(_Strict):
    """The Dataverse organization (environment) this policy governs."""

    id: Guid = Field(
        description="The organization's id (OrganizationId in every message; Settings > "
        "Developer resources). Messages from any other organization are rejected."
    )
    name: str | None = Field(None, description="A display name, used in notifications.")


DeliveryValue = str | int


def _delivery(column: Column, value: DeliveryValue | None) -> int | str | None:
    """A readable name or a number -> the number, keeping `organization_default` as is."""
    if value is None or value == ORGANIZATION_DEFAULT:
        return value
    names = DELIVERY_METHODS[column]
    if isinstance(value, bool):
        raise ValueError("expected a delivery method name or number, found true/false")
    if isinstance(value, int):
        if value not in names.values():
            allowed = ", ".join(f"{n} ({v})" for n, v in names.items())
            raise ValueError(f"{value} is not a delivery method for this column; use {allowed}")
        return value
    if value not in names:
        allowed = ", ".join(names) + f", {ORGANIZATION_DEFAULT}"
        raise ValueError(
            f"{quoted(value)} is not a delivery method for this column; use one of {allowed}"
        )
    return names[value]


class DeliveryMethodsRule(_Strict):
    """Server-side sync's recommended defaults are 2 / 2 / 1 (server_side_sync for all three)."""

    mode: Mode | None = Field(None, description="Overrides the policy's mode for this rule.")
    incoming_email: DeliveryValue | None = Field(
        None,
        description="server_side_sync, outlook, forward_mailbox, none, a number, or "
        "organization_default (read from the organization's email settings at run time). "
        "Leave out to not govern the column.",
    )
    outgoing_email: DeliveryValue | None = Field(
        None, description="server_side_sync, outlook, none, a number, or organization_default."
    )
    appointments_contacts_tasks: DeliveryValue | None = Field(
        None, description="server_side_sync, outlook, none, a number, or organization_default."
    )

    @field_validator(
        "incoming_email", "outgoing_email", "appointments_contacts_tasks", mode="before"
    )
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # YAML reads yes/no/on/off as booleans, which would otherwise pass as 1 and 0.
        if isinstance(value, bool):
            raise ValueError("expected a delivery method name or number, found true/false")
        return value

    @field_validator("incoming_email")
    @classmethod
    def _incoming(cls, value: DeliveryValue | None) -> int | str | None:
        return _delivery(Column.INCOMING, value)

    @field_validator("outgoing_email")
    @classmethod
    def _outgoing(cls, value: DeliveryValue | None) -> int | str | None:
        return _delivery(Column.OUTGOING, value)

    @field_validator("appointments_contacts_tasks")
    @classmethod
    def _act(cls, value: DeliveryValue | None) -> int | str | None:
        return _delivery(Column.ACT, value)

    def expected(self) -> dict[Column, int | str]:
        """Governed columns -> number, or ORGANIZATION_DEFAULT."""
        pairs = (
            (Column.INCOMING, self.incoming_email),
            (Column.OUTGOING, self.outgoing_email),
            (Column.ACT, self.appointments_contacts_tasks),
        )
        return {column: value for column, value in pairs if value is not None}


class EmailAddressRule(_Strict):
    """The mailbox's email address. An address is only ever written back, or approved, if it is
    the mailbox's own: its owner's primary email or sign-in name, or a queue's address."""

    mode: Mode | None = Field(None, description="Overrides the policy's mode for this rule.")
    changes: Literal["forbidden", "allowed"] = Field(
        "forbidden",
        description="forbidden: a change by anyone not exempt is reverted to the previous "
        "address when that is the mailbox's own, else to the owner's primary email (this is "
        "what stops a user from pointing their mailbox at an executive's).",
    )
    allowed_domains: tuple[DomainName, ...] = Field(
        (), description="If set, an address must be in one of these domains (e.g. contoso.com)."
    )
    must_match_owner: bool = Field(
        False,
        description="A mailbox's address must be its own: the owner's primary email or sign-in "
        "name, or for a queue mailbox the queue's address (looked up live; offline replay "
        "reports this check as not verifiable).",
    )
    restore_approval: bool = Field(
        False,
        description="After reverting an address, set emailrouteraccessapproval back to Approved, "
        "only while the address on the row is the mailbox's own (the guardrail's application "
        "user needs the approve-email privileges).",
    )


class ServerProfileRule(_Strict):
    """The email server profile the mailbox synchronizes through."""

    mode: Mode | None = Field(None, description="Overrides the policy's mode for this rule.")
    expected: str = Field(
        ORGANIZATION_DEFAULT,
        description="organization_default (the organization's default server profile, read at "
        "run time) or an emailserverprofile id.",
    )

    @field_validator("expected")
    @classmethod
    def _expected(cls, value: str) -> str:
        if value != ORGANIZATION_DEFAULT and not is_guid(value):
            raise ValueError(f"{quoted(value)} is neither {ORGANIZATION_DEFAULT} nor a GUID")
        return value.lower()


class Rules(_Strict):
    """What is governed: at least one rule."""

    delivery_methods: DeliveryMethodsRule | None = None
    email_address: EmailAddressRule | None = None
    server_profile: ServerProfileRule | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Rules:
        if all(rule is None for _, rule in self):
            raise ValueError(
                "no rules: set at least one of delivery_methods, email_address, server_profile"
            )
        return self


class Exemptions(_Strict):
    """Changes that are not governed (administrators fixing mailboxes, service mailboxes)."""

    mailboxes: tuple[Guid, ...] = Field((), description="Mailbox ids never governed.")
    users: tuple[UserRef, ...] = Field(
        (),
        description="Users whose changes are not governed, by systemuserid or primary email.",
    )
    security_roles: tuple[str, ...] = Field(
        (), description="Changes by holders of these roles (by name or id) are not governed."
    )


def parse_duration(value: str | int) -> int:
    if isinstance(value, int):
        return value
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"{quoted(value)} is not a duration such as 30m, 1h or 1d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class Throttle(_Strict):
    """At most this many notifications per mailbox per window, counted across instances."""

    max_per_mailbox: StrictInt = Field(
        3,
        ge=1,
        le=MAX_PER_MAILBOX,
        description=f"Notifications per mailbox per window, 1 to {MAX_PER_MAILBOX}.",
    )
    window: Annotated[
        str | StrictInt,
        Field(description="e.g. 1h, 30m, 1d, or seconds; from 1 second to 30 days."),
    ] = "1h"

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | int) -> str | int:
        # Compared, never printed: an int can have more digits than str() will write.
        if not 1 <= parse_duration(value) <= MAX_WINDOW_SECONDS:
            raise ValueError(
                f"the window must be between 1 second and 30 days ({MAX_WINDOW_SECONDS} seconds)"
            )
        return value

    @property
    def window_seconds(self) -> int:
        return parse_duration(self.window)


class Notifications(_Strict):
    """Who is told about a revert, and what the mail says."""

    enabled: bool = True
    sender: EmailAddress | None = Field(
        None, description="The mailbox Graph sends from (needs Mail.Send for the app)."
    )
    notify_owner: bool = Field(
        True, description="Mail the mailbox's owner at their directory address."
    )
    extra_recipients: tuple[EmailAddress, ...] = Field(
        (), description="Copied on every notification; in audit mode, the only recipients."
    )
    subject: str = Field(
        "Your Dynamics 365 mailbox settings were changed back",
        max_length=MAX_SUBJECT_LENGTH,
        description=f"Plain text, at most {MAX_SUBJECT_LENGTH} characters, with the same "
        "{{ placeholders }} as the template except {{ violations }}; line breaks in values "
        "become spaces.",
    )
    template: str | None = Field(
        None,
        max_length=MAX_TEMPLATE_LENGTH,
        description=f"The HTML body, at most {MAX_TEMPLATE_LENGTH} characters; leave out for "
        "the built-in template. Write values as {{ placeholder }}, optionally with the filters "
        + ", ".join(TEMPLATE_FILTERS)
        + ". Every value is HTML-escaped, and may stand in text or in the quoted value of one of "
        "the attributes "
        + ", ".join(TEXT_ATTRIBUTES)
        + "; never in a URL, event-handler or style attribute, a <script> or <style> element, a "
        "comment or a tag. No {% statements %}, no |safe; no <svg>, <math> or <noscript>. "
        "Placeholders: "
        + "; ".join(f"{{{{ {name} }}}}: {meaning}" for name, meaning in PLACEHOLDERS.items())
        + ".",
    )
    throttle: Throttle = Throttle()

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, subject=False)
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        _check_template(value, subject=True)
        return value

    @model_validator(mode="after")
    def _needs_sender(self) -> Notifications:
        if self.enabled and self.sender is None:
            raise ValueError("notifications are enabled but no sender is set")
        return self


def _check_template(text: str, *, subject: bool) -> None:
    """Checks a template (compiled when first rendered); a problem says where in the template."""
    # guardrails.render imports this module for the placeholders, so it is imported here.
    from guardrails.render import TemplateProblem, check_template

    try:
        check_template(text, subject=subject)
    except TemplateProblem as problem:
        raise PydanticCustomError(
            "template",
            "{problem}",
            {
                "problem": str(problem),
                "template_line": problem.line,
                "template_column": problem.column,
            },
        ) from None


class Policy(_Strict):
    """A Mailbox Guardrails policy."""

    version: Literal[1] = Field(description="The policy format version; 1.")
    organization: Organization
    mode: Mode = Field(
        Mode.ENFORCE, description="enforce: revert and notify. audit: record and notify admins."
    )
    scope: Scope = Field(Scope.USER_MAILBOXES, description="Which mailboxes are governed.")
    rules: Rules
    exemptions: Exemptions = Exemptions()
    notifications: Notifications = Notifications(enabled=False)

    def mode_of(self, rule: DeliveryMethodsRule | EmailAddressRule | ServerProfileRule) -> Mode:
        return rule.mode or self.mode
