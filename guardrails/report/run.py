"""`guardrails report`: read the tenant, check every mailbox, write the report. GETs only.

The current policy is the function's (GUARDRAILS_POLICY, else ./policy.yaml). With `--policy`,
the report is a preview: that candidate's findings beside the current policy's, from the same
single pass over the mailboxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from guardrails.clients.dataverse import DataverseClient
from guardrails.errors import ConfigurationError
from guardrails.policy import Policy, load_policy
from guardrails.report import reader
from guardrails.report.connect import accepted_lookup, connection, dataverse_client
from guardrails.report.html import write_html
from guardrails.report.model import Report
from guardrails.report.render import write_csv, write_json, write_table
from guardrails.report.scan import AcceptedLookup, scan

WRITERS: Mapping[str, Callable[[Report, TextIO], None]] = {
    "table": write_table,
    "json": write_json,
    "csv": write_csv,
    "html": write_html,
}


def build_report(
    client: DataverseClient,
    policy: tuple[Policy, str],
    candidate: tuple[Policy, str] | None = None,
    *,
    accepted: AcceptedLookup | None = None,
    accepted_note: str,
    page_size: int = reader.PAGE_SIZE,
) -> Report:
    """One pass over the tenant; `policy` and `candidate` are (policy, how the report names it)."""
    organization = client.whoami().organization_id
    for checked, label in (policy, *((candidate,) if candidate else ())):
        if checked.organization.id.lower() != organization:
            raise ConfigurationError(
                [
                    f"{label} governs organization {checked.organization.id}, but "
                    f"{client.base_url} is organization {organization}"
                ]
            )
    generated_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    summary, entries = scan(
        reader.mailbox_rows(client, page_size),
        reader.directory(client, page_size),
        policy[0],
        candidate[0] if candidate else None,
        accepted=accepted,
        organization_defaults=client.organization_defaults,
    )
    return Report(
        organization_id=organization,
        dataverse_url=client.base_url.rsplit("/api/", 1)[0],
        policy=policy[1],
        generated_at=generated_at,
        accepted_values=accepted_note,
        summary=summary,
        entries=tuple(entries),
        candidate_policy=candidate[1] if candidate else None,
    )


def _policies(
    candidate_path: Path | None, environ: Mapping[str, str], err: TextIO
) -> tuple[tuple[Policy, str], tuple[Policy, str] | None]:
    current_path = Path(environ.get("GUARDRAILS_POLICY", "").strip() or "policy.yaml")
    if candidate_path is None:
        if not current_path.is_file():
            raise ConfigurationError(
                [
                    f"no policy at {current_path}: set GUARDRAILS_POLICY, run where policy.yaml "
                    "is, or name one with --policy"
                ]
            )
        return (load_policy(current_path), str(current_path)), None
    candidate = (load_policy(candidate_path), str(candidate_path))
    if not current_path.is_file():
        err.write(
            f"note: no current policy at {current_path} (GUARDRAILS_POLICY or ./policy.yaml); "
            f"reporting with {candidate_path} alone\n"
        )
        return candidate, None
    if current_path.resolve() == candidate_path.resolve():
        return candidate, None
    return (load_policy(current_path), str(current_path)), candidate


def run(
    output_format: str,
    output: Path | None,
    candidate_path: Path | None,
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
) -> int:
    policy, candidate = _policies(candidate_path, environ, err)
    client, tokens = dataverse_client(connection(environ))
    accepted, note = accepted_lookup(environ, tokens)
    started = time.perf_counter()
    report = build_report(client, policy, candidate, accepted=accepted, accepted_note=note)
    elapsed = time.perf_counter() - started
    write = WRITERS[output_format]
    if output is None:
        write(report, out)
    else:
        with output.open("w", encoding="utf-8", newline="") as file:
            write(report, file)
    scanned = report.summary.scanned
    err.write(
        f"{scanned} mailboxes read in {elapsed:.1f} s ({scanned / max(elapsed, 1e-9):,.0f}/s): "
        f"{report.summary.current.non_compliant} non-compliant, "
        f"{report.summary.hijack_suspects} hijack suspect(s)"
        + (f"; written to {output}" if output else "")
        + "\n"
    )
    return 0
