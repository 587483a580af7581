"""What to do when the identity platform refuses the app's credentials, by AADSTS code.

One table, read by `guardrails doctor` (its `token` check) and by the worker, which logs the same
text once per process when its own token request is refused: a wrong or expired secret is
configuration a person must fix, never a transient failure to retry in silence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_AADSTS = re.compile(r"AADSTS(\d{5,8})")


@dataclass(frozen=True, slots=True)
class CredentialFix:
    """One refusal: the setting that is wrong, what is wrong with it, and what to do."""

    code: str  # the AADSTS number, e.g. "7000215"
    setting: str
    problem: str
    fix: str

    @property
    def text(self) -> str:
        return f"{self.setting}: {self.problem} (AADSTS{self.code}). {self.fix}"


FIXES: Mapping[str, CredentialFix] = {
    fix.code: fix
    for fix in (
        CredentialFix(
            "7000215",
            "AZURE_CLIENT_SECRET",
            "the client secret is wrong",
            "Copy the secret's Value (not its Secret ID) from the app registration's "
            "Certificates & secrets into AZURE_CLIENT_SECRET.",
        ),
        CredentialFix(
            "7000222",
            "AZURE_CLIENT_SECRET",
            "the client secret has expired",
            "Add a new client secret to the app registration, put its Value in "
            "AZURE_CLIENT_SECRET, then delete the expired one (or use a certificate or a managed "
            "identity, which do not expire this way).",
        ),
        CredentialFix(
            "700016",
            "AZURE_CLIENT_ID",
            "no application with this client id exists in the tenant",
            "Set AZURE_CLIENT_ID to the app registration's Application (client) ID and "
            "AZURE_TENANT_ID to its Directory (tenant) ID.",
        ),
        CredentialFix(
            "90002",
            "AZURE_TENANT_ID",
            "the tenant does not exist",
            "Set AZURE_TENANT_ID to the Directory (tenant) ID, and AZURE_AUTHORITY_HOST to the "
            "authority of the tenant's cloud.",
        ),
        CredentialFix(
            "700027",
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "the certificate is not one of the app's (or its signature does not verify)",
            "Upload the certificate in AZURE_CLIENT_CERTIFICATE_PATH to the app registration's "
            "Certificates & secrets, or point the setting at the registered one.",
        ),
        CredentialFix(
            "7000218",
            "AZURE_CLIENT_SECRET",
            "no credential was sent",
            "Set AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, or unset both to use the "
            "managed identity.",
        ),
    )
}


def aadsts_code(text: str | None) -> str | None:
    """The first AADSTS number in an error text (an error_description, an exception)."""
    match = _AADSTS.search(text or "")
    return match.group(1) if match else None


def fix_for(text: str | None) -> CredentialFix | None:
    """The fix for the AADSTS code in `text` (or `text` is the bare number), if known."""
    if text is not None and text.isdigit():
        return FIXES.get(text)
    code = aadsts_code(text)
    return FIXES.get(code) if code else None
