"""The sweep's server-side filter, derived from the policy."""

from __future__ import annotations

from guardrails.mailbox import Column
from guardrails.reconcile import drift_filter

from .conftest import PROFILE, make_policy

DELIVERY = """
  delivery_methods:
    incoming_email: server_side_sync
    outgoing_email: server_side_sync
    appointments_contacts_tasks: server_side_sync
"""


def test_the_baseline_becomes_the_flow_triggers_filter() -> None:
    assert drift_filter(make_policy(DELIVERY), None) == (
        "incomingemaildeliverymethod ne 2 or outgoingemaildeliverymethod ne 2 "
        "or actdeliverymethod ne 1"
    )


def test_organization_defaults_and_the_server_profile_are_filled_in() -> None:
    rules = (
        "\n  delivery_methods:\n    incoming_email: organization_default\n"
        "  server_profile:\n    expected: organization_default\n"
    )
    defaults = {Column.INCOMING: 2, Column.SERVER_PROFILE: PROFILE}
    assert drift_filter(make_policy(rules), defaults) == (
        f"incomingemaildeliverymethod ne 2 or _emailserverprofile_value ne {PROFILE}"
    )


def test_address_rules_need_every_row() -> None:
    rules = DELIVERY + "  email_address:\n    must_match_owner: true\n"
    assert drift_filter(make_policy(rules), None) is None
    domains = DELIVERY + "  email_address:\n    allowed_domains: [contoso.com]\n"
    assert drift_filter(make_policy(domains), None) is None
