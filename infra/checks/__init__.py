"""Mailbox Guardrails' own checkov checks (CKV_GR_*), loaded with --external-checks-dir.

checkov imports every module in this directory; it needs this file to do so.
"""
