"""The compliance report: read-only, every non-compliant mailbox and every hijack suspect.

`reader` streams the tenant from the Web API, `scan` checks each row (`model`, pure), `render`
and `html` write table, JSON, CSV and HTML, `run` wires them for `guardrails report`.
"""

from guardrails.report.commands import add_commands

__all__ = ["add_commands"]
