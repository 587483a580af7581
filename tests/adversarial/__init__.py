"""Attacks on the guardrail: forged messages, hostile policies and templates."""
