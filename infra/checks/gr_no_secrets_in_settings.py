"""CKV_GR_5: no secret in the app settings.

AZURE_CLIENT_SECRET is never a setting: the app signs in as its managed identity (or, where that
cannot be, with a certificate from Key Vault). A setting named like a secret (PASSWORD, SECRET,
KEY) may only hold a Key Vault reference (@Microsoft.KeyVault(...)) or nothing; checkov shows an
unresolved parameter as its name, so any other value counts as a literal secret.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import SETTINGS_RESOURCE_TYPES, Unreadable, app_settings, settings_key

FORBIDDEN_NAMES = {"AZURE_CLIENT_SECRET"}
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY")
KEY_VAULT_REFERENCE = "@microsoft.keyvault("


def holds_secret(name: str, value: Any) -> bool:
    upper = name.upper()
    if upper in FORBIDDEN_NAMES:
        return True
    if not any(word in upper for word in SECRET_WORDS):
        return False
    if value is None or value == "":
        return False
    return not (isinstance(value, str) and value.strip().lower().startswith(KEY_VAULT_REFERENCE))


class NoSecretsInSettings(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Function App settings hold no secrets (client secret, passwords, keys)",
            id="CKV_GR_5",
            categories=(CheckCategories.SECRETS,),
            supported_resources=SETTINGS_RESOURCE_TYPES,
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = [settings_key(self.entity_type)]
        try:
            settings = app_settings(self.entity_type, conf)
        except Unreadable:
            return CheckResult.FAILED
        if any(holds_secret(name, value) for name, value in settings):
            return CheckResult.FAILED
        return CheckResult.PASSED


check = NoSecretsInSettings()
