"""The least-privilege security role for the guardrail's application user, privilege by privilege.

`guardrails role` prints it; `guardrails role --create` creates it (or adds what an existing role
of that name lacks) through the Web API, signed in as an administrator. Which privileges a
deployment needs depends on its policy: approving addresses only with `restore_approval`, queues
and teams only when queue mailboxes are governed, the server profile lookup only with the
`server_profile` rule. The `doctor` privileges let `guardrails doctor`, running as the app, read
the registration it checks; the worker itself never uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from guardrails.policy.model import Policy, Scope

if TYPE_CHECKING:
    from guardrails.clients.http import ApiClient

ROLE_NAME = "Mailbox Guardrails"
DEPTHS = ("Basic", "Local", "Deep", "Global")  # PrivilegeDepth 0..3


class Need(StrEnum):
    ALWAYS = "always"
    QUEUE_MAILBOXES = "queue_mailboxes"  # scope queue_mailboxes or all
    SERVER_PROFILE = "server_profile"  # rules.server_profile
    RESTORE_APPROVAL = "restore_approval"  # rules.email_address.restore_approval
    DOCTOR = "doctor"  # guardrails doctor, run as the app


@dataclass(frozen=True, slots=True)
class Privilege:
    name: str
    depth: str
    needed: Need
    why: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "depth": self.depth,
            "needed": self.needed.value,
            "why": self.why,
        }

    def row(self) -> tuple[str, ...]:
        return (self.name, self.depth, self.needed.value, self.why)


_G = "Global"  # every business unit: mailboxes, users and roles of the whole organization
PRIVILEGES: tuple[Privilege, ...] = (
    Privilege(
        "prvReadMailbox",
        _G,
        Need.ALWAYS,
        "read a mailbox row (its ETag, the row an oversize message left out, the row again after "
        "a 412) before putting anything back",
    ),
    Privilege(
        "prvWriteMailbox",
        _G,
        Need.ALWAYS,
        "put forbidden values back: a PATCH of only the violating columns, conditional on the ETag",
    ),
    Privilege(
        "prvReadUser",
        _G,
        Need.ALWAYS,
        "the owner's primary email (where the notice goes, and the only address it restores), the "
        "initiator's access mode, and its own privileges for doctor (RetrieveUserPrivileges)",
    ),
    Privilege(
        "prvReadRole",
        _G,
        Need.ALWAYS,
        "the initiator's security roles, for exemptions by role",
    ),
    Privilege(
        "prvReadOrganization",
        _G,
        Need.ALWAYS,
        "the organization's default delivery methods and server profile (organization_default)",
    ),
    Privilege(
        "prvReadQueue",
        _G,
        Need.QUEUE_MAILBOXES,
        "a queue mailbox's own address and owner",
    ),
    Privilege(
        "prvReadTeam",
        _G,
        Need.QUEUE_MAILBOXES,
        "the administrator of a team that owns a queue: the person told about its mailbox",
    ),
    Privilege(
        "prvAppendMailbox",
        _G,
        Need.SERVER_PROFILE,
        "set a mailbox's server profile lookup back (the mailbox side of the link)",
    ),
    Privilege(
        "prvAppendToEmailServerProfile",
        _G,
        Need.SERVER_PROFILE,
        "set a mailbox's server profile lookup back (the profile side of the link)",
    ),
    Privilege(
        "prvApproveRejectEmailAddress",
        _G,
        Need.RESTORE_APPROVAL,
        "approve a restored address again (only ever the mailbox's own), so server-side sync "
        "resumes without an administrator",
    ),
    Privilege(
        "prvReadServiceEndpoint",
        _G,
        Need.DOCTOR,
        "doctor: the service endpoint's message format, namespace and queue",
    ),
    Privilege(
        "prvReadSdkMessageProcessingStep",
        _G,
        Need.DOCTOR,
        "doctor: the steps' mode, stage, state and filtering attributes",
    ),
    Privilege(
        "prvReadSdkMessageProcessingStepImage",
        _G,
        Need.DOCTOR,
        "doctor: the pre image's alias and columns",
    ),
    Privilege(
        "prvReadSdkMessage",
        _G,
        Need.DOCTOR,
        "doctor: which steps are the Create and Update steps",
    ),
    Privilege(
        "prvReadSdkMessageFilter",
        _G,
        Need.DOCTOR,
        "doctor: that the steps are on the mailbox table",
    ),
)


def needs(policy: Policy | None) -> frozenset[Need]:
    """What a policy makes necessary; without a policy, everything."""
    if policy is None:
        return frozenset(Need)
    found = {Need.ALWAYS, Need.DOCTOR}
    if policy.scope is not Scope.USER_MAILBOXES:
        found.add(Need.QUEUE_MAILBOXES)
    if policy.rules.server_profile is not None:
        found.add(Need.SERVER_PROFILE)
    email = policy.rules.email_address
    if email is not None and email.restore_approval:
        found.add(Need.RESTORE_APPROVAL)
    return frozenset(found)


def privileges_for(policy: Policy | None, *, doctor: bool = True) -> tuple[Privilege, ...]:
    """The role's privileges for a policy (all of them without one); `doctor=False` leaves out
    the ones only `guardrails doctor` uses."""
    wanted = needs(policy)
    return tuple(
        p for p in PRIVILEGES if p.needed in wanted and (doctor or p.needed is not Need.DOCTOR)
    )


def depth_rank(depth: object) -> int:
    """A PrivilegeDepth as the Web API returns it (its name or number) -> 0..3; -1 if unknown."""
    if isinstance(depth, int) and not isinstance(depth, bool):
        return depth if 0 <= depth < len(DEPTHS) else -1
    text = str(depth).strip()
    for index, name in enumerate(DEPTHS):
        if text.lower() == name.lower() or text == str(index):
            return index
    return -1


# -- creating the role through the Web API -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleOutcome:
    """What `guardrails role --create` did: the role, whether it was new, what it added, and the
    privileges the role holds beyond these (left alone: remove them in the role editor)."""

    role_id: str
    created: bool
    added: tuple[Privilege, ...]
    extra: tuple[str, ...]


def create_role(
    client: ApiClient, privileges: Sequence[Privilege], *, name: str = ROLE_NAME
) -> RoleOutcome:
    """Create the role in the signed-in user's business unit, or complete the one there of that
    name: only privileges it lacks (or holds at a shallower depth) are added."""
    from guardrails.admin.register import created_id, read_collection

    unit = str(client.request("GET", "WhoAmI").json()["BusinessUnitId"]).lower()
    wanted = " or ".join(f"name eq '{p.name}'" for p in privileges)
    catalog = {
        str(row["name"]): str(row["privilegeid"]).lower()
        for row in read_collection(
            client, "privileges", {"$select": "privilegeid,name", "$filter": wanted}
        )
    }
    unknown = [p.name for p in privileges if p.name not in catalog]
    if unknown:
        raise ValueError(f"this environment has no privilege named {', '.join(unknown)}")
    quoted = name.replace("'", "''")
    found = read_collection(
        client,
        "roles",
        {
            "$select": "roleid,name",
            "$filter": f"name eq '{quoted}' and _businessunitid_value eq {unit}",
        },
    )
    current: dict[str, int] = {}
    if found:
        role_id = str(found[0]["roleid"]).lower()
        names = {pid: n for n, pid in catalog.items()}
        held = client.request(
            "GET", f"roles({role_id})/Microsoft.Dynamics.CRM.RetrieveRolePrivilegesRole()"
        ).json()
        for entry in held.get("RolePrivileges", []):
            privilege = entry.get("PrivilegeName") or names.get(str(entry.get("PrivilegeId")))
            if privilege:
                current[str(privilege)] = depth_rank(entry.get("Depth"))
    else:
        response = client.request(
            "POST",
            "roles",
            json={"name": name, "businessunitid@odata.bind": f"/businessunits({unit})"},
            headers={"Content-Type": "application/json"},
            expect=(204, 201),
            repeatable=False,
        )
        role_id = created_id(response)
    added = tuple(p for p in privileges if current.get(p.name, -1) < depth_rank(p.depth))
    if added:
        client.request(
            "POST",
            f"roles({role_id})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
            json={
                "Privileges": [
                    {"PrivilegeId": catalog[p.name], "Depth": p.depth, "BusinessUnitId": unit}
                    for p in added
                ]
            },
            headers={"Content-Type": "application/json"},
            expect=(204,),
        )
    extra = tuple(sorted(set(current) - {p.name for p in privileges}))
    return RoleOutcome(role_id, not found, added, extra)
