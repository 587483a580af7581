from guardrails.engine import Decision, Outcome, Violation
from guardrails.mailbox import Column
from guardrails.notify import recipients
from guardrails.policy.model import Notifications
from guardrails.render import render

HOSTILE = '<script>alert("x")</script>@evil.example'


def decision(*, notify_owner: bool = True, also: tuple[str, ...] = ()) -> Decision:
    violation = Violation(
        rule="email_address",
        column=Column.EMAIL,
        actual=HOSTILE,
        expected="adele@contoso.com",
        enforced=True,
        message="changed",
    )
    return Decision(
        Outcome.VIOLATION,
        "Reverting",
        mailbox_id="5b1a3e3c-9a0e-4f43-8a4c-7f0a8f6c1d01",
        correlation_id="9d3c1c4e-2f0a-4b7e-9d55-0c2f8e1a7b10",
        violations=(violation,),
        patch={Column.EMAIL: "adele@contoso.com"},
        notify_owner=notify_owner,
        notify_also=also,
    )


def test_every_value_in_the_template_is_escaped() -> None:
    settings = Notifications(
        sender="guardrails@contoso.com",
        subject="Mailbox {{ mailbox_name }}\nBcc: x",
        template="<p>{{ owner_name }}</p><p>{{ mailbox_name }}</p>{{ violations }}<i>$5</i>",
    )
    subject, body = render(
        decision(),
        settings,
        owner_name="Adele <b>Vance</b>",
        owner_email="adele@contoso.com",
        initiator=None,
        organization_name="Contoso",
        mailbox_name='"><img src=x onerror=alert(1)>',
        wrote=True,
    )
    assert "<script>" not in body and "<img" not in body and "<b>Vance" not in body
    assert "&lt;script&gt;" in body
    assert "Adele &lt;b&gt;Vance&lt;/b&gt;" in body
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in body
    assert "<i>$5</i>" in body  # a dollar is just a dollar
    assert "changed back to adele@contoso.com" in body
    assert "\n" not in subject and subject.startswith("Mailbox ")


def test_default_template_renders_all_fields() -> None:
    _, body = render(
        decision(),
        Notifications(sender="guardrails@contoso.com"),
        owner_name="Adele",
        owner_email="adele@contoso.com",
        initiator="Adele",
        organization_name="Contoso",
        mailbox_name="Adele Vance",
        wrote=True,
    )
    assert "$" not in body and "{{" not in body and "{%" not in body
    assert "Hello Adele," in body and "Contoso" in body and "Adele Vance" in body
    assert "9d3c1c4e-2f0a-4b7e-9d55-0c2f8e1a7b10" in body


def test_recipients_owner_first_admins_copied_without_duplicates() -> None:
    to = recipients(decision(also=("secops@contoso.com", "ADELE@contoso.com")), "adele@contoso.com")
    assert to is not None
    assert to.to == ("adele@contoso.com",)
    assert to.cc == ("secops@contoso.com",)


def test_recipients_admins_only_when_owner_is_not_notified() -> None:
    to = recipients(decision(notify_owner=False, also=("secops@contoso.com",)), "adele@x.com")
    assert to is not None and to.to == ("secops@contoso.com",) and to.cc == ()
    assert recipients(decision(notify_owner=False), "adele@contoso.com") is None
    assert recipients(decision(), None) is None
