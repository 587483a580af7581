"""A whole organization on loopback: identity, Dataverse and Graph, wired like production.

Every mailbox write (a person's, an admin's, the guardrail's own) becomes the message Dataverse's
asynchronous service-endpoint step would post, so the demo and the integration tests feed the
worker exactly what it would receive from Service Bus.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from guardrails.admin.role import privileges_for as role_privileges
from guardrails.sandbox.dataverse import DataverseSimulator, WriteEvent
from guardrails.sandbox.graph import GraphSimulator
from guardrails.sandbox.identity import IdentitySimulator
from guardrails.sandbox.messages import mailbox_message, to_body
from guardrails.sandbox.tls import SandboxTLS

if TYPE_CHECKING:
    from guardrails.admin.register import Plan

Credential = Literal["client_secret", "certificate", "managed_identity"]
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "3f4e2d1c-0b9a-4c8d-9e7f-6a5b4c3d2e1f"
SECRET = "sandbox-secret-not-for-production"
GUARDRAIL_ROLE = "Mailbox Guardrails"
# What admin consent grants the app in Graph: sendMail/draft send, and drafts for exactly-once
# notifications (create, then look up by internetMessageId after a lost answer).
GRAPH_PERMISSIONS = ("Mail.Send", "Mail.ReadWrite")
# A deployment administrator's app (its application user is a System Administrator), for the
# commands that change the registration: `guardrails register`, `unregister`, `role --create`.
ADMIN_CLIENT_ID = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
ADMIN_SECRET = "sandbox-admin-secret-not-for-production"
# The organization's public client app through which a person signs in with a device code
# (`--device-code --admin-client-id`): "Allow public client flows", Dynamics CRM
# user_impersonation consented.
ADMIN_PUBLIC_CLIENT_ID = "4b3a2918-0f7e-4d6c-9b5a-483726150f9e"
SAS_KEY_NAME = "dataverse-send"
SAS_KEY = "c2FuZGJveC1zYXMta2V5LW5vdC1mb3ItcHJvZHVjdGlvbg=="
_PRE_IMAGE_COLUMNS = (
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailaddress",
)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message as Service Bus would hand it to the function."""

    message_id: str
    body: bytes
    properties: Mapping[str, Any]
    write: WriteEvent


@dataclass
class Sandbox:
    credential: Credential = "client_secret"
    organization_name: str = "Contoso"
    # Whether the async context carries the write's ?tag= (unconfirmed in Dataverse): the
    # guardrail must recognise its own writes either way.
    echo_tag: bool = True
    tls: SandboxTLS = field(init=False)
    identity: IdentitySimulator = field(init=False)
    dataverse: DataverseSimulator = field(init=False)
    graph: GraphSimulator = field(init=False)
    app_user_id: str = field(init=False)
    outbox: list[QueuedMessage] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _certificate: Path | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tls = SandboxTLS()
        self.identity = IdentitySimulator(self.tls)
        self.dataverse = DataverseSimulator(
            self.tls,
            organization_name=self.organization_name,
            approver_roles=("System Administrator", GUARDRAIL_ROLE),
        )
        self.dataverse.token_validator = self.identity.validator(self.dataverse.url)
        self.dataverse.user_token_validator = self.identity.user_validator(self.dataverse.url)
        self.graph = GraphSimulator(self.tls)
        self.graph.token_validator = self.identity.validator(self.graph.url)
        client_id = self._register_app()
        self.graph.grant(client_id, *GRAPH_PERMISSIONS)
        self.app_user_id = self.dataverse.add_user(
            fullname="# Mailbox Guardrails",
            internalemailaddress="guardrails@contoso.com",
            roles=[GUARDRAIL_ROLE],
            application=True,
            applicationid=client_id,
        )
        self.dataverse.map_client_to_user(client_id, self.app_user_id)
        # The role as `guardrails role --create` makes it (every privilege, with doctor's reads).
        self.dataverse.set_role_privileges(
            GUARDRAIL_ROLE, {p.name: p.depth for p in role_privileges(None)}
        )
        self.dataverse.set_email_settings(2, 2, 1)
        self.dataverse.add_write_listener(self._on_write)

    def _register_app(self) -> str:
        if self.credential == "managed_identity":
            return self.identity.register_managed_identity(CLIENT_ID)
        if self.credential == "certificate":
            self._certificate, _ = self.tls.client_certificate("mailbox-guardrails")
            self.identity.register_app(TENANT_ID, CLIENT_ID, certificate=self._certificate)
        else:
            self.identity.register_app(TENANT_ID, CLIENT_ID, secret=SECRET)
        return CLIENT_ID

    def environment(
        self, policy_path: Path, queue: str = "dataverse-mailbox-events"
    ) -> dict[str, str]:
        """App settings (and the CA bundle) that point the worker at this sandbox."""
        env = {
            "DATAVERSE_URL": self.dataverse.url,
            "GRAPH_URL": self.graph.url,
            "AZURE_AUTHORITY_HOST": self.identity.url,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "GUARDRAILS_POLICY": str(policy_path),
            "SERVICEBUS_QUEUE": queue,
            "SERVICEBUS": "Endpoint=sb://sandbox.invalid/;SharedAccessKeyName=l;SharedAccessKey=k",
            # These machines set REQUESTS_CA_BUNDLE, which overrides a session's verify=.
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_bundle_path()),
        }
        if self.credential == "managed_identity":
            env["IDENTITY_ENDPOINT"] = self.identity.msi_endpoint
            env["IDENTITY_HEADER"] = self.identity.identity_header
        else:
            env["AZURE_TENANT_ID"] = TENANT_ID
            if self.credential == "certificate":
                env["AZURE_CLIENT_CERTIFICATE_PATH"] = str(self._certificate)
            else:
                env["AZURE_CLIENT_SECRET"] = SECRET
        return env

    def admin_environment(self) -> dict[str, str]:
        """Settings that sign in as a deployment administrator (an app registration whose
        application user is a System Administrator), created on first use."""
        if self.dataverse.user_for_client(ADMIN_CLIENT_ID) is None:
            self.identity.register_app(TENANT_ID, ADMIN_CLIENT_ID, secret=ADMIN_SECRET)
            self.dataverse.add_user(
                fullname="# Deployment administrator",
                internalemailaddress=None,
                roles=["System Administrator"],
                applicationid=ADMIN_CLIENT_ID,
            )
        return {
            "DATAVERSE_URL": self.dataverse.url,
            "AZURE_AUTHORITY_HOST": self.identity.url,
            "AZURE_TENANT_ID": TENANT_ID,
            "AZURE_CLIENT_ID": ADMIN_CLIENT_ID,
            "AZURE_CLIENT_SECRET": ADMIN_SECRET,
            "REQUESTS_CA_BUNDLE": str(self.tls.ca_bundle_path()),
        }

    def admin_public_client(self) -> str:
        """The client id of the public client app for device-code sign-in (registered on first
        use), for `--admin-client-id`."""
        self.identity.register_public_client(TENANT_ID, ADMIN_PUBLIC_CLIENT_ID)
        return ADMIN_PUBLIC_CLIENT_ID

    def add_signin_user(
        self,
        name: str,
        email: str,
        *,
        roles: tuple[str, ...] = ("System Administrator",),
    ) -> str:
        """A person who signs in with a device code: a Dataverse user with ``roles`` and the
        Entra user of the same object id, so their delegated tokens act as that user. Returns
        the ``systemuserid``."""
        user_id = self.dataverse.add_user(
            fullname=name, internalemailaddress=email, roles=list(roles)
        )
        object_id = str(self.dataverse.user(user_id)["azureactivedirectoryobjectid"])
        self.identity.register_user(
            TENANT_ID, username=email, object_id=object_id, display_name=name
        )
        return user_id

    def approve_device_code(self, user_code: str, user_id: str) -> None:
        """The Dataverse user ``user_id`` (see :meth:`add_signin_user`) approves the code."""
        object_id = self.dataverse.user(user_id)["azureactivedirectoryobjectid"]
        self.identity.approve_device_code(user_code, str(object_id))

    def register_integration(
        self,
        policy_path: Path,
        *,
        queue: str = "dataverse-mailbox-events",
        namespace: str = "sb://sandbox.invalid/",
    ) -> Plan:
        """Do what `guardrails register` does, signed in as the administrator: the service
        endpoint, the Create and Update steps and the pre image, for this policy. Returns the
        plan it applied (a second call applies nothing)."""
        from guardrails.admin.register import (
            Target,
            apply_plan,
            governed_columns,
            plan_registration,
            read_registration,
        )
        from guardrails.admin.signin import credentials_from_env
        from guardrails.clients.auth import MsalTokenProvider
        from guardrails.clients.dataverse import DataverseClient
        from guardrails.clients.http import new_session
        from guardrails.policy import load_policy

        env = self.admin_environment()
        target = Target(
            namespace=namespace,
            queue=queue,
            sas_key_name=SAS_KEY_NAME,
            columns=governed_columns(load_policy(policy_path)),
            sas_key=SAS_KEY,
        )
        with patched_environ({"REQUESTS_CA_BUNDLE": env["REQUESTS_CA_BUNDLE"]}):
            session = new_session(10.0)
            try:
                tokens = MsalTokenProvider(credentials_from_env(env), session=session)
                client = DataverseClient(env["DATAVERSE_URL"], tokens=tokens, session=session)
                plan = plan_registration(target, read_registration(client))
                apply_plan(client, plan)
            finally:
                session.close()
        return plan

    def add_person(
        self, name: str, email: str, *, roles: tuple[str, ...] = (), **mailbox: Any
    ) -> tuple[str, str]:
        """A user and their approved server-side sync mailbox: (user id, mailbox id)."""
        user_id = self.dataverse.add_user(
            fullname=name, internalemailaddress=email, roles=list(roles)
        )
        mailbox_id = self.dataverse.add_mailbox(
            owner_user_id=user_id, emailaddress=email, name=name, **mailbox
        )
        return user_id, mailbox_id

    def add_queue_mailbox(
        self,
        name: str,
        email: str,
        *,
        team: str | None = None,
        administrator_user_id: str | None = None,
        **mailbox: Any,
    ) -> tuple[str, str]:
        """A queue and its server-side sync mailbox: (queue id, mailbox id).

        With ``team`` the queue is owned by a new owner team of that name, administered by
        ``administrator_user_id`` (required then), so the mailbox's owner is a team, not a user.
        """
        owner_team_id: str | None = None
        if team is not None:
            if administrator_user_id is None:
                raise ValueError("a team needs administrator_user_id")
            owner_team_id = self.dataverse.add_team(
                team, administrator_user_id=administrator_user_id
            )
        queue_id = self.dataverse.add_queue(
            name=name, emailaddress=email, owner_team_id=owner_team_id
        )
        mailbox_id = self.dataverse.add_mailbox(queue_id=queue_id, emailaddress=email, **mailbox)
        return queue_id, mailbox_id

    def _on_write(self, write: WriteEvent) -> None:
        before = write.before
        pre = {column: before.get(column) for column in _PRE_IMAGE_COLUMNS}
        pre["emailserverprofile"] = before.get("_emailserverprofile_value")
        regarding_id = before.get("_regardingobjectid_value")
        if regarding_id:
            kind = before.get("_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
            pre["regardingobjectid"] = (kind or "systemuser", regarding_id)
        # What the caller sent, in the message's column names (a lookup bind -> its id).
        changes: dict[str, Any] = {}
        for key, value in write.requested.items():
            if key == "_emailserverprofile_value" or key.startswith("emailserverprofile@"):
                changes["emailserverprofile"] = write.changes.get("_emailserverprofile_value")
            elif "@" not in key and not key.startswith("_"):
                changes[key] = value
        context = mailbox_message(
            message="Update",
            mailbox_id=write.mailbox_id,
            organization_id=self.dataverse.organization_id,
            organization_name=self.organization_name,
            user_id=write.user_id,
            changes=changes,
            before=pre,
            row_version=write.versionnumber,
            tag=write.tag if self.echo_tag else None,
            mailbox_name=str(before.get("name") or "Mailbox"),
        )
        properties = {
            "http://schemas.microsoft.com/xrm/2011/Claims/Organization": self.dataverse.url,
            "http://schemas.microsoft.com/xrm/2011/Claims/User": write.user_id,
            "http://schemas.microsoft.com/xrm/2011/Claims/InitiatingUser": write.user_id,
            "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": "mailbox",
            "http://schemas.microsoft.com/xrm/2011/Claims/RequestName": "Update",
        }
        queued = QueuedMessage(str(uuid.uuid4()), to_body(context), properties, write)
        with self._lock:
            self.outbox.append(queued)

    def take(self) -> list[QueuedMessage]:
        """The messages posted since the last call, oldest first."""
        with self._lock:
            taken, self.outbox = self.outbox, []
        return taken

    def close(self) -> None:
        for server in (self.graph, self.dataverse, self.identity):
            server.close()
        self.tls.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (MSAL reads IDENTITY_* from os.environ)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
