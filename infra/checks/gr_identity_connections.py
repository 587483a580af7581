"""CKV_GR_4: app settings connect by identity, never by connection string or key.

A connection is <NAME>__fullyQualifiedNamespace / __accountName / __credential / __clientId, not
a connection string. Fails on a value carrying key material (AccountKey=, SharedAccessKey=,
Endpoint=sb://, DefaultEndpointsProtocol=, or a listKeys()/listConnectionStrings() call) and on a
connection-string setting name, except APPLICATIONINSIGHTS_CONNECTION_STRING, which holds no
secret and is the documented way to point the host at Application Insights.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import SETTINGS_RESOURCE_TYPES, Unreadable, app_settings, settings_key, strings

KEY_MATERIAL = (
    "accountkey=",
    "sharedaccesskey=",
    "endpoint=sb://",
    "defaultendpointsprotocol=",
    "listkeys",
    "listconnectionstrings",
)
ALLOWED_CONNECTION_STRING_NAMES = {"APPLICATIONINSIGHTS_CONNECTION_STRING"}
# Settings whose value is a connection string by definition: the host's storage, and the
# trigger's connection (function_app.py: connection="SERVICEBUS") in its connection-string form.
CONNECTION_STRING_SETTINGS = {"AZUREWEBJOBSSTORAGE", "AZUREWEBJOBSDASHBOARD", "SERVICEBUS"}


def is_connection_string_name(name: str) -> bool:
    upper = name.upper()
    if upper in ALLOWED_CONNECTION_STRING_NAMES:
        return False
    return (
        upper in CONNECTION_STRING_SETTINGS
        or "CONNECTION_STRING" in upper
        or "CONNECTIONSTRING" in upper
    )


class IdentityBasedConnections(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Function App settings use identity-based connections, no connection strings",
            id="CKV_GR_4",
            categories=(CheckCategories.SECRETS,),
            supported_resources=SETTINGS_RESOURCE_TYPES,
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = [settings_key(self.entity_type)]
        try:
            settings = app_settings(self.entity_type, conf)
        except Unreadable:
            return CheckResult.FAILED
        for name, value in settings:
            if is_connection_string_name(name):
                return CheckResult.FAILED
            if any(marker in text.lower() for text in strings(value) for marker in KEY_MATERIAL):
                return CheckResult.FAILED
        return CheckResult.PASSED


check = IdentityBasedConnections()
