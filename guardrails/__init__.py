"""Mailbox Guardrails: keeps Dataverse mailbox rows the way the organization configured them."""

__version__ = "0.1.0"
