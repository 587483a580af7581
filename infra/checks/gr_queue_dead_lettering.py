"""CKV_GR_1: the queue dead-letters expired messages instead of dropping them."""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import properties


class QueueDeadLettersOnExpiration(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus queue dead-letters expired messages (dead-lettering on expiration)",
            id="CKV_GR_1",
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_resources=("Microsoft.ServiceBus/namespaces/queues",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["properties/deadLetteringOnMessageExpiration"]
        if properties(conf).get("deadLetteringOnMessageExpiration") is True:
            return CheckResult.PASSED
        return CheckResult.FAILED


check = QueueDeadLettersOnExpiration()
