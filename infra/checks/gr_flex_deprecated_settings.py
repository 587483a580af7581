"""CKV_GR_7: a Flex Consumption app declares none of the settings Flex Consumption deprecated.

On Flex Consumption the runtime, the package location and the scale live in functionAppConfig;
the old app settings and site properties for them are rejected or silently ignored (Microsoft
Learn, "Flex Consumption plan deprecations"). A site is Flex when it declares functionAppConfig.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from gr_common import (
    SETTINGS_RESOURCE_TYPES,
    SITE_CONFIG_TYPE,
    Unreadable,
    app_settings,
    is_flex_consumption,
    properties,
    settings_key,
)

DEPRECATED_SETTINGS = {
    "ENABLE_ORYX_BUILD",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "PYTHON_THREADPOOL_THREAD_COUNT",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTOVERVNET",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
    "WEBSITE_VNET_ROUTE_ALL",
}
DEPRECATED_SITE_CONFIG = {
    "alwaysOn",
    "functionAppScaleLimit",
    "linuxFxVersion",
    "minimumElasticInstanceCount",
    "preWarmedInstanceCount",
}


class NoFlexDeprecatedSettings(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Flex Consumption Function App declares no Flex-deprecated settings",
            id="CKV_GR_7",
            categories=(CheckCategories.CONVENTION,),
            supported_resources=SETTINGS_RESOURCE_TYPES,
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = [settings_key(self.entity_type)]
        # A config resource cannot tell which plan its site is on; judge it by its settings, since
        # this project has only the Flex Consumption app.
        if self.entity_type != SITE_CONFIG_TYPE:
            if not is_flex_consumption(conf):
                return CheckResult.UNKNOWN
            site_config = properties(conf).get("siteConfig")
            if isinstance(site_config, dict) and DEPRECATED_SITE_CONFIG & set(site_config):
                self.evaluated_keys.append("properties/siteConfig")
                return CheckResult.FAILED
        try:
            settings = app_settings(self.entity_type, conf)
        except Unreadable:
            return CheckResult.FAILED
        if any(name.upper() in DEPRECATED_SETTINGS for name, _ in settings):
            return CheckResult.FAILED
        return CheckResult.PASSED


check = NoFlexDeprecatedSettings()
