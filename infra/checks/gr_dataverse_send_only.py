"""CKV_GR_2: the SAS rule Dataverse posts with grants Send on the queue, and nothing more.

The function app never uses SAS (it connects with its managed identity), so every SAS rule in the
template is Dataverse's. It must sit on the queue (a namespace-level rule reaches every entity)
and grant exactly Send: Listen would let it read and complete the guardrail's messages, Manage
would let it change or delete the queue.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import properties

QUEUE_RULE = "Microsoft.ServiceBus/namespaces/queues/authorizationRules"
NAMESPACE_RULE = "Microsoft.ServiceBus/namespaces/authorizationRules"


class DataverseRuleIsSendOnly(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Service Bus SAS rule for Dataverse is on the queue and grants Send only",
            id="CKV_GR_2",
            categories=(CheckCategories.IAM,),
            supported_resources=(QUEUE_RULE, NAMESPACE_RULE),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["properties/rights"]
        if self.entity_type == NAMESPACE_RULE:
            return CheckResult.FAILED
        rights = properties(conf).get("rights")
        if isinstance(rights, list) and rights == ["Send"]:
            return CheckResult.PASSED
        return CheckResult.FAILED


check = DataverseRuleIsSendOnly()
