"""Helpers shared by the CKV_GR_* checks; checkov imports this module too, and it adds no check.

checkov's Bicep graph hands a check the resource body as plain data: a literal, or a parameter
default of the same file, arrives as its value; a parameter without a default arrives as the
parameter's name (a string); a function call arrives as {"function": {...}} and an expression as
{"operator": {...}}. It does not follow a module's parameters back to the caller. So the
invariants these checks guard must be literals or parameter defaults in the module that declares
the resource, and a value the check cannot read as a literal is a failure, not a pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SITE_TYPES = ("Microsoft.Web/sites", "Microsoft.Web/sites/slots")
SITE_CONFIG_TYPE = "Microsoft.Web/sites/config"
SETTINGS_RESOURCE_TYPES = (*SITE_TYPES, SITE_CONFIG_TYPE)


class Unreadable(Exception):
    """The app settings are not a literal the check can read (built by an expression)."""


def properties(conf: dict[str, Any]) -> dict[str, Any]:
    value = conf.get("properties")
    return value if isinstance(value, dict) else {}


def app_settings(entity_type: str, conf: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (name, value) app settings a site, or a site's `appsettings` config resource, declares.

    Raises Unreadable when they are not a literal list of {name, value} objects (or, for the
    config resource, a literal object), since nothing can then be said about them.
    """
    props = properties(conf)
    if entity_type == SITE_CONFIG_TYPE:
        if str(conf.get("name", "")).strip("'").lower() != "appsettings":
            return []
        if "properties" in conf and not isinstance(conf["properties"], dict):
            raise Unreadable("properties")
        return [(str(name).strip("'"), value) for name, value in props.items()]
    site_config = props.get("siteConfig")
    if site_config is None:
        return []
    if not isinstance(site_config, dict):
        raise Unreadable("properties/siteConfig")
    settings = site_config.get("appSettings")
    if settings is None:
        return []
    if not isinstance(settings, list):
        raise Unreadable("properties/siteConfig/appSettings")
    pairs: list[tuple[str, Any]] = []
    for entry in settings:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise Unreadable("properties/siteConfig/appSettings")
        pairs.append((entry["name"], entry.get("value")))
    return pairs


def settings_key(entity_type: str) -> str:
    if entity_type == SITE_CONFIG_TYPE:
        return "properties"
    return "properties/siteConfig/appSettings"


def strings(value: Any) -> Iterator[str]:
    """Every string inside a rendered value: literals, parameter names, interpolations, and the
    names and arguments of function calls."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def is_flex_consumption(conf: dict[str, Any]) -> bool:
    """A Flex Consumption app declares functionAppConfig (runtime, deployment, scale)."""
    return "functionAppConfig" in properties(conf)
