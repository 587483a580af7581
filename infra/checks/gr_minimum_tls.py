"""CKV_GR_3: TLS 1.2 or later on the storage account, the Service Bus namespace and the site.

Each states its minimum explicitly: the services' own defaults have been TLS 1.0 in older API
versions, and a missing value is read here as that default.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import SITE_TYPES, properties

STORAGE = "Microsoft.Storage/storageAccounts"
SERVICE_BUS = "Microsoft.ServiceBus/namespaces"

# Where each resource type keeps its minimum, and the values that are 1.2 or later.
MODERN = {
    STORAGE: ("minimumTlsVersion", {"TLS1_2", "TLS1_3"}),
    SERVICE_BUS: ("minimumTlsVersion", {"1.2", "1.3"}),
}
SITE_MODERN = {"1.2", "1.3"}


class MinimumTls12(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Storage, Service Bus and the Function App require TLS 1.2 or later",
            id="CKV_GR_3",
            categories=(CheckCategories.ENCRYPTION,),
            supported_resources=(STORAGE, SERVICE_BUS, *SITE_TYPES),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        props = properties(conf)
        if self.entity_type in MODERN:
            key, modern = MODERN[self.entity_type]
            self.evaluated_keys = [f"properties/{key}"]
            return CheckResult.PASSED if props.get(key) in modern else CheckResult.FAILED
        site_config = props.get("siteConfig")
        self.evaluated_keys = ["properties/siteConfig/minTlsVersion"]
        if not isinstance(site_config, dict):
            return CheckResult.FAILED
        if str(site_config.get("minTlsVersion")) not in SITE_MODERN:
            return CheckResult.FAILED
        # The deployment (scm) endpoint, when set, must not be weaker.
        if "scmMinTlsVersion" in site_config:
            self.evaluated_keys.append("properties/siteConfig/scmMinTlsVersion")
            if str(site_config["scmMinTlsVersion"]) not in SITE_MODERN:
                return CheckResult.FAILED
        return CheckResult.PASSED


check = MinimumTls12()
