"""CKV_GR_6: the queue redelivers a message 5 to 10 times before dead-lettering it.

Fewer, and a transient Dataverse or Graph failure dead-letters a good event; more, and a poison
message keeps the guardrail busy long before it reaches the dead-letter queue and its alert. The
value must be a literal or a parameter default the check can read.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import properties

LOWEST, HIGHEST = 5, 10


class QueueMaxDeliveryCount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name=f"Service Bus queue maxDeliveryCount is between {LOWEST} and {HIGHEST}",
            id="CKV_GR_6",
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_resources=("Microsoft.ServiceBus/namespaces/queues",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["properties/maxDeliveryCount"]
        count = properties(conf).get("maxDeliveryCount")
        if isinstance(count, bool) or not isinstance(count, int):
            return CheckResult.FAILED
        return CheckResult.PASSED if LOWEST <= count <= HIGHEST else CheckResult.FAILED


check = QueueMaxDeliveryCount()
