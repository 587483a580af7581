"""The admin's policy: the model (schema next to behaviour) and the YAML loader."""

from guardrails.policy.loader import PolicyError, PolicyIssue, load_policy, parse_policy
from guardrails.policy.model import ORGANIZATION_DEFAULT, Mode, Policy, Scope

__all__ = [
    "ORGANIZATION_DEFAULT",
    "Mode",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "Scope",
    "load_policy",
    "parse_policy",
]
