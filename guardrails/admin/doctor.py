"""`guardrails doctor`: a deployment checked end to end, each check saying pass or fail and the fix.

Every check is a small function returning a :class:`Check`; doctor runs them all (a check whose
prerequisite failed says so instead of failing obscurely), reads everything and writes nothing:
no Dataverse write, no mail sent (the Graph check reads one message header), no message received
(the Service Bus check peeks), no table created (the storage check lists tables).

It signs in with the app's own credentials, as the function does, so the token and privilege
checks are about the identity the function really uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from guardrails.admin.commands import CHECK_NAMES
from guardrails.admin.register import (
    PRE_IMAGE_ALIAS,
    QUEUE_CONTRACTS,
    Registration,
    Row,
    governed_columns,
    read_registration,
)
from guardrails.admin.role import DEPTHS, PRIVILEGES, Privilege, depth_rank, privileges_for
from guardrails.clients.auth import MsalTokenProvider, TokenProvider
from guardrails.clients.auth_fixes import fix_for
from guardrails.clients.dataverse import DataverseClient, WhoAmI
from guardrails.clients.graph import GraphClient
from guardrails.clients.http import RetryPolicy, new_session
from guardrails.errors import (
    AuthenticationError,
    ConfigurationError,
    GuardrailsError,
    ServiceError,
)
from guardrails.policy import Policy, PolicyError, load_policy
from guardrails.settings import PUBLIC_GRAPH, load_settings

REGISTER = "run `guardrails register` (as an administrator): it corrects the registration in place"
_FORMATS = {1: "Binary XML", 2: "JSON", 3: "Text XML"}
_STAGES = {10: "pre-validation", 20: "pre-operation", 30: "main operation", 40: "post-operation"}
# The pre image must carry these besides the governed columns: whose mailbox it is.
_IMAGE_REQUIRED = ("regardingobjectid", "ownerid")


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict; `fix` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}

    def row(self) -> tuple[str, ...]:
        result = "FAIL" if not self.ok else "SKIP" if self.skipped else "PASS"
        return (result, self.name, self.detail, self.fix)

    @property
    def skipped(self) -> bool:
        return self.ok and self.detail.startswith("skipped")


class _Failed(Exception):
    """A check's failure, raised from its helpers: the detail and the fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass
class Run:
    """What the checks share: the settings as given, and what earlier checks found."""

    env: Mapping[str, str]
    session: requests.Session
    cwd: Path
    policy: Policy | None = None
    tokens: TokenProvider | None = None
    dataverse: DataverseClient | None = None
    whoami: WhoAmI | None = None
    registration: Registration | None = None
    endpoint: Row | None = None
    steps: dict[str, Row] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def require_policy(self) -> Policy:
        assert self.policy is not None
        return self.policy

    def require_dataverse(self) -> DataverseClient:
        assert self.dataverse is not None
        return self.dataverse


# -- the checks ----------------------------------------------------------------------------------


def check_settings(run: Run) -> Check:
    try:
        settings = load_settings(run.env, app_root=run.cwd)
    except ConfigurationError as exc:
        return Check(
            "settings",
            False,
            "; ".join(exc.problems),
            "set them in the Function App's application settings (local.settings.json when run "
            "locally); local.settings.json.example lists every one",
        )
    return Check(
        "settings",
        True,
        f"Dataverse {settings.dataverse_url}, credential {settings.credentials.kind}, "
        f"queue {settings.queue_name}, policy {settings.policy_path}",
    )


def check_policy(run: Run) -> Check:
    path = Path(run.get("GUARDRAILS_POLICY") or "policy.yaml")
    if not path.is_absolute():
        path = run.cwd / path
    try:
        run.policy = load_policy(path)
    except PolicyError as exc:
        first = "; ".join(str(issue) for issue in exc.issues[:3])
        more = f" (and {len(exc.issues) - 3} more)" if len(exc.issues) > 3 else ""
        return Check(
            "policy",
            False,
            f"{len(exc.issues)} problem(s): {first}{more}",
            f"run `guardrails policy validate {path}` and correct each problem it lists",
        )
    columns = ", ".join(governed_columns(run.policy))
    return Check("policy", True, f"{path}: valid; governs {columns}")


def check_token(run: Run) -> Check:
    from guardrails.admin.signin import credentials_from_env

    url = run.get("DATAVERSE_URL")
    if url is None:
        raise _Failed("DATAVERSE_URL is not set", "set DATAVERSE_URL (see the settings check)")
    try:
        credentials = credentials_from_env(run.env)
    except ConfigurationError as exc:
        raise _Failed("; ".join(exc.problems), "correct the AZURE_* settings") from exc
    tokens = MsalTokenProvider(credentials, session=run.session)
    scope = f"{url.rstrip('/')}/.default"
    try:
        tokens.token(scope)
    except AuthenticationError as exc:
        raise _token_failure(exc, credentials.kind) from exc
    run.tokens = tokens
    return Check("token", True, f"{credentials.kind}: a token for {scope}")


def _token_failure(exc: AuthenticationError, kind: str) -> _Failed:
    known = fix_for(str(exc))
    if known is not None:
        return _Failed(f"{kind}: {known.setting}: {known.problem} (AADSTS{known.code})", known.text)
    if exc.transient:
        hint = (
            "; with a managed identity, run doctor where the identity is (the Function App's "
            "SSH console)"
            if kind == "managed_identity"
            else ""
        )
        return _Failed(
            f"the identity platform could not be reached: {exc}",
            f"check AZURE_AUTHORITY_HOST, AZURE_TENANT_ID and the network{hint}",
        )
    return _Failed(
        f"{kind}: the token request was refused: {exc}",
        "check AZURE_TENANT_ID, AZURE_CLIENT_ID and the credential in the app registration",
    )


def check_dataverse(run: Run) -> Check:
    url = run.get("DATAVERSE_URL")
    assert url is not None
    assert run.tokens is not None
    client = DataverseClient(
        url,
        tokens=run.tokens,
        session=run.session,
        retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_retry_after=2.0),
    )
    try:
        run.whoami = client.whoami()
    except AuthenticationError as exc:
        raise _no_application_user(str(exc)) from exc
    except ServiceError as exc:
        if exc.status in (401, 403):
            raise _no_application_user(str(exc)) from exc
        if exc.status is None:
            raise _Failed(
                f"Dataverse could not be reached: {exc}",
                "check DATAVERSE_URL (the environment's root URL) and the network",
            ) from exc
        raise _Failed(f"WhoAmI failed: {exc}", "check DATAVERSE_URL") from exc
    run.dataverse = client
    return Check(
        "dataverse",
        True,
        f"WhoAmI: application user {run.whoami.user_id}, organization {run.whoami.organization_id}",
    )


def _no_application_user(detail: str) -> _Failed:
    return _Failed(
        f"Dataverse refused the app: {detail}",
        "create an application user for AZURE_CLIENT_ID in this environment (Power Platform "
        "admin center > the environment > Settings > Application users) and give it the "
        "Mailbox Guardrails role (`guardrails role`)",
    )


def check_organization(run: Run) -> Check:
    policy, whoami = run.require_policy(), run.whoami
    assert whoami is not None
    expected = policy.organization.id
    if expected != whoami.organization_id:
        raise _Failed(
            f"the policy is for organization {expected}, but DATAVERSE_URL is organization "
            f"{whoami.organization_id}: every message would be rejected",
            f"set organization.id in the policy to {whoami.organization_id} (Settings > "
            "Developer resources), or point DATAVERSE_URL at the policy's environment",
        )
    return Check("organization", True, f"the policy's organization {expected} is this one")


def check_privileges(run: Run) -> Check:
    client, whoami = run.require_dataverse(), run.whoami
    assert whoami is not None
    try:
        body = client.request(
            "GET",
            f"systemusers({whoami.user_id})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()",
        ).json()
    except ServiceError as exc:
        raise _Failed(
            f"RetrieveUserPrivileges failed: {exc}",
            "give the application user prvReadUser (part of `guardrails role`)",
        ) from exc
    held: dict[str, int] = {}
    for entry in body.get("RolePrivileges", []):
        name = str(entry.get("PrivilegeName") or "")
        held[name] = max(held.get(name, -1), depth_rank(entry.get("Depth")))
    needed = privileges_for(run.require_policy(), doctor=False)
    lacking = [p for p in needed if held.get(p.name, -1) < depth_rank(p.depth)]
    if lacking:
        raise _Failed(
            "the application user lacks: " + "; ".join(_lack(p, held) for p in lacking),
            "give the application user the Mailbox Guardrails role: `guardrails role --create` "
            "(as an administrator) creates it with each of these, then assign it in the "
            "application user's security roles",
        )
    outside = len(set(held) - {p.name for p in PRIVILEGES})
    beyond = (
        f"; it also holds {outside} privilege(s) outside the Mailbox Guardrails role (least "
        "privilege is that role alone)"
        if outside
        else ""
    )
    return Check("privileges", True, f"holds the {len(needed)} privileges it needs{beyond}")


def _lack(privilege: Privilege, held: Mapping[str, int]) -> str:
    depth = held.get(privilege.name, -1)
    have = f" (it holds it at {DEPTHS[depth]} depth)" if 0 <= depth < len(DEPTHS) else ""
    return f"{privilege.name} at {privilege.depth}{have}, to {privilege.why}"


def _registration(run: Run) -> Registration:
    if run.registration is None:
        try:
            run.registration = read_registration(run.require_dataverse())
        except ServiceError as exc:
            if exc.status == 403:
                raise _Failed(
                    f"the registration cannot be read: {exc.message}",
                    "give the application user the doctor's read privileges (`guardrails role "
                    "--create` adds them)",
                ) from exc
            raise
    return run.registration


def check_endpoint(run: Run) -> Check:
    queue = run.get("SERVICEBUS_QUEUE")
    if queue is None:
        raise _Failed("SERVICEBUS_QUEUE is not set", "set SERVICEBUS_QUEUE (the function's queue)")
    registration = _registration(run)
    posting = [
        e
        for e in registration.endpoints
        if str(e.get("path") or "").strip().lower() == queue.lower()
    ]
    if not posting:
        raise _Failed(f"no service endpoint posts to queue '{queue}'", REGISTER)
    if len(posting) > 1:
        names = ", ".join(f"'{e.name}' ({e.id})" for e in posting)
        raise _Failed(
            f"{len(posting)} service endpoints post to queue '{queue}': {names}",
            "keep one (delete the others in the Plug-in Registration Tool); each posts every "
            "change again",
        )
    endpoint = posting[0]
    problems: list[str] = []
    fmt = endpoint.get("messageformat")
    if fmt != 2:
        problems.append(
            f"its message format is {_FORMATS.get(fmt, fmt)} (messageformat {fmt}); the "
            "guardrail reads JSON only (messageformat 2)"
        )
    if endpoint.get("contract") not in QUEUE_CONTRACTS:
        problems.append(f"its contract {endpoint.get('contract')} is not a queue (6, or 2)")
    listening = _namespace_host(run)
    posted = (urlsplit(str(endpoint.get("namespaceaddress") or "")).hostname or "").lower()
    if listening and posted and listening != posted:
        problems.append(f"it posts to namespace {posted}, the function listens on {listening}")
    if problems:
        raise _Failed(
            f"service endpoint '{endpoint.name}' ({endpoint.id}): " + "; ".join(problems),
            "set Message Format to JSON and the queue's namespace in the Plug-in Registration "
            f"Tool, or {REGISTER}",
        )
    run.endpoint = endpoint
    return Check(
        "endpoint",
        True,
        f"service endpoint '{endpoint.name}' posts JSON to {posted or '?'} queue '{queue}'",
    )


def _namespace_host(run: Run) -> str | None:
    namespace = run.get("SERVICEBUS__fullyQualifiedNamespace")
    if namespace:
        return namespace.removeprefix("sb://").strip("/").split(":")[0].lower()
    connection = run.get("SERVICEBUS") or ""
    for part in connection.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "endpoint":
            return (urlsplit(value.strip()).hostname or "").lower() or None
    return None


def _step(run: Run, message: str) -> Row:
    registration, endpoint = _registration(run), run.endpoint
    assert endpoint is not None
    message_id = registration.message_ids[message]
    mailbox_filter = registration.filter_ids[message]
    mine = [
        s
        for s in registration.steps
        if str(s.get("_eventhandler_value") or "").lower() == endpoint.id
        and str(s.get("_sdkmessageid_value") or "").lower() == message_id
    ]
    for step in mine:
        if not step.get("_sdkmessagefilterid_value"):
            raise _Failed(
                f"step '{step.name}' ({step.id}) has no table: it posts {message} of every table",
                f"set its primary entity to mailbox, or {REGISTER}",
            )
    on_mailbox = [s for s in mine if str(s.get("_sdkmessagefilterid_value")) == mailbox_filter]
    if not on_mailbox:
        raise _Failed(
            f"no step posts {message} of mailbox to service endpoint '{endpoint.name}'", REGISTER
        )
    if len(on_mailbox) > 1:
        raise _Failed(
            f"{len(on_mailbox)} steps post {message} of mailbox: each change arrives "
            f"{len(on_mailbox)} times",
            "keep one (delete the others in the Plug-in Registration Tool)",
        )
    step = on_mailbox[0]
    problems: list[str] = []
    if step.get("mode") != 1:
        problems.append(
            "it is synchronous: it posts before the change commits and is not recalled on "
            "rollback (mode must be 1, asynchronous)"
        )
    stage = step.get("stage")
    if stage != 40:
        problems.append(
            f"it runs at stage {stage} ({_STAGES.get(stage, 'unknown')}); it must be "
            "post-operation (40)"
        )
    if step.get("statecode") != 0:
        problems.append("it is disabled: no change reaches the guardrail")
    if message == "Update":
        problems.extend(_filter_problems(step, run.require_policy()))
    if problems:
        raise _Failed(
            f"step '{step.name}' ({step.id}): " + "; ".join(problems),
            f"correct it in the Plug-in Registration Tool, or {REGISTER}",
        )
    run.steps[message] = step
    return step


def _filter_problems(step: Row, policy: Policy) -> list[str]:
    listed = [c.strip().lower() for c in str(step.get("filteringattributes") or "").split(",")]
    listed = [c for c in listed if c]
    if not listed:
        return [
            "its filtering attributes are empty: it fires on every column change, including "
            "server-side sync's own bookkeeping"
        ]
    missing = [c for c in governed_columns(policy) if c not in listed]
    if missing:
        return [
            f"its filtering attributes lack {', '.join(missing)}: changes to "
            f"{'it' if len(missing) == 1 else 'them'} never reach the guardrail"
        ]
    return []


def check_create_step(run: Run) -> Check:
    step = _step(run, "Create")
    return Check("create-step", True, f"'{step.name}': asynchronous, post-operation, enabled")


def check_update_step(run: Run) -> Check:
    step = _step(run, "Update")
    extra = set(_split(step.get("filteringattributes"))) - set(
        governed_columns(run.require_policy())
    )
    also = f" (also {', '.join(sorted(extra))}, which the policy does not govern)" if extra else ""
    return Check(
        "update-step",
        True,
        f"'{step.name}': asynchronous, post-operation, enabled, filtering on every governed "
        f"column{also}",
    )


def _split(value: object) -> list[str]:
    return [c.strip().lower() for c in str(value or "").split(",") if c.strip()]


def check_pre_image(run: Run) -> Check:
    step = run.steps["Update"]
    images = [
        i
        for i in _registration(run).images
        if str(i.get("_sdkmessageprocessingstepid_value") or "").lower() == step.id
        and i.get("imagetype") in (0, 2)
    ]
    if not images:
        raise _Failed(
            f"the Update step '{step.name}' has no pre image: a forbidden address change is "
            "found but the previous address cannot be put back",
            REGISTER,
        )
    image = next((i for i in images if i.get("entityalias") == PRE_IMAGE_ALIAS), images[0])
    problems: list[str] = []
    alias = image.get("entityalias")
    if alias != PRE_IMAGE_ALIAS:
        problems.append(f"its alias is '{alias}', not '{PRE_IMAGE_ALIAS}'")
    if image.get("messagepropertyname") != "Target":
        problems.append(
            f"it images '{image.get('messagepropertyname')}', not the Target (the mailbox row)"
        )
    attributes = _split(image.get("attributes"))
    if not attributes:
        problems.append("its attributes are empty, which means every column of the row")
    else:
        wanted = (*governed_columns(run.require_policy()), *_IMAGE_REQUIRED)
        missing = [c for c in wanted if c not in attributes]
        if missing:
            problems.append(f"its attributes lack {', '.join(missing)}")
    if problems:
        raise _Failed(
            f"pre image '{image.name}' ({image.id}): " + "; ".join(problems),
            f"correct the image in the Plug-in Registration Tool, or {REGISTER}",
        )
    return Check(
        "pre-image",
        True,
        f"'{PRE_IMAGE_ALIAS}' on the Update step with {', '.join(attributes)}",
    )


def check_graph(run: Run) -> Check:
    notifications = run.require_policy().notifications
    if not notifications.enabled or notifications.sender is None:
        return Check("graph", True, "notifications are off in the policy: Graph is not used")
    assert run.tokens is not None
    graph_url = (run.get("GRAPH_URL") or PUBLIC_GRAPH).rstrip("/")
    sender = notifications.sender
    client = GraphClient(
        graph_url,
        scope=f"{graph_url}/.default",
        tokens=run.tokens,
        session=run.session,
        retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_retry_after=2.0),
    )
    try:
        client.request(
            "GET", f"v1.0/users/{quote(sender)}/messages", params={"$top": "1", "$select": "id"}
        )
    except AuthenticationError as exc:
        raise _token_failure(exc, "Graph") from exc
    except ServiceError as exc:
        if exc.status == 403:
            raise _Failed(
                f"the app may not use the sender mailbox {sender} ({exc.code or exc.message})",
                "grant the app Mail.Send and Mail.ReadWrite (application permissions, admin "
                "consent) and include the sender in its Exchange application access policy "
                "(or RBAC for Applications)",
            ) from exc
        if exc.status == 404:
            raise _Failed(
                f"there is no mailbox {sender} ({exc.code or exc.message})",
                "set notifications.sender in the policy to an existing mailbox",
            ) from exc
        raise _Failed(f"Graph could not be used: {exc}", "check GRAPH_URL and the network") from exc
    return Check(
        "graph",
        True,
        f"the sender mailbox {sender} is usable (read with Mail.ReadWrite; nothing was sent)",
    )


def check_servicebus(run: Run) -> Check:
    from guardrails.clients.servicebus import QueueClient, servicebus_client, servicebus_settings

    try:
        settings = servicebus_settings(run.env)
    except ConfigurationError as exc:
        raise _Failed("; ".join(exc.problems), "set the Service Bus settings") from exc
    queue = QueueClient(settings, client_factory=lambda: servicebus_client(settings, retry_total=0))
    try:
        seen = queue.check()
    except ServiceError as exc:
        text = str(exc)
        if "MessagingEntityNotFound" in text:
            fix = (
                f"create the queue '{settings.queue}' in the namespace, or correct SERVICEBUS_QUEUE"
            )
        elif "Authentication" in text or "Authorization" in text or "Unauthorized" in text:
            fix = (
                "give the connection Listen on the queue (the function's identity: the Azure "
                "Service Bus Data Receiver role)"
            )
        else:
            fix = "check SERVICEBUS or SERVICEBUS__fullyQualifiedNamespace and the network"
        raise _Failed(f"the queue '{settings.queue}' cannot be read: {text}", fix) from exc
    finally:
        queue.close()
    waiting = "a message is waiting" if seen else "it is empty"
    return Check("servicebus", True, f"queue '{settings.queue}' peeked: {waiting}")


def check_storage(run: Run) -> Check:
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
    from azure.data.tables import TableServiceClient

    from guardrails.clients.auth import TokenProviderCredential
    from guardrails.clients.tables import storage_settings
    from guardrails.settings import Credentials

    try:
        settings = storage_settings(run.env)
    except ConfigurationError as exc:
        raise _Failed("; ".join(exc.problems), "set AzureWebJobsStorage") from exc
    options: dict[str, Any] = {"connection_timeout": 3, "read_timeout": 5, "retry_total": 0}
    if settings.connection_string is not None:
        service = TableServiceClient.from_connection_string(settings.connection_string, **options)
    else:
        assert settings.table_endpoint is not None
        identity = MsalTokenProvider(
            Credentials(tenant_id=None, client_id=settings.client_id), session=run.session
        )
        service = TableServiceClient(
            settings.table_endpoint, credential=TokenProviderCredential(identity), **options
        )
    prefix = settings.table_prefix
    try:
        with service:
            pages = service.list_tables(results_per_page=1000).by_page()
            names = [table.name for table in next(pages, [])]
    except (ClientAuthenticationError, HttpResponseError) as exc:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            raise _Failed(
                f"Table Storage refused access ({settings.source}): {exc}",
                "give the function's identity the Storage Table Data Contributor role on the "
                f"account, or correct the key in {settings.source}",
            ) from exc
        raise _Failed(f"Table Storage failed: {exc}", f"check {settings.source}") from exc
    except (AzureError, GuardrailsError) as exc:
        raise _Failed(
            f"Table Storage could not be reached ({settings.source}): {exc}",
            f"check {settings.source} and the network",
        ) from exc
    mine = [n for n in names if n.lower().startswith(prefix.lower())]
    found = f"{len(mine)} table(s)" if mine else "no tables yet (the function creates them)"
    return Check("storage", True, f"{service.url}: {found} with prefix '{prefix}'")


# -- running them --------------------------------------------------------------------------------

CheckFunction = Callable[[Run], Check]
# (name, check, the checks it needs to have passed), in the order they run and are printed.
CHECKS: tuple[tuple[str, CheckFunction, tuple[str, ...]], ...] = (
    ("settings", check_settings, ()),
    ("policy", check_policy, ()),
    ("token", check_token, ()),
    ("dataverse", check_dataverse, ("token",)),
    ("organization", check_organization, ("policy", "dataverse")),
    ("privileges", check_privileges, ("policy", "dataverse")),
    ("endpoint", check_endpoint, ("dataverse",)),
    ("create-step", check_create_step, ("endpoint",)),
    ("update-step", check_update_step, ("policy", "endpoint")),
    ("pre-image", check_pre_image, ("update-step",)),
    ("graph", check_graph, ("policy", "token")),
    ("servicebus", check_servicebus, ()),
    ("storage", check_storage, ()),
)
if tuple(name for name, _, _ in CHECKS) != CHECK_NAMES:  # the CLI lists them without importing us
    raise AssertionError("guardrails.admin.commands.CHECK_NAMES must name CHECKS in order")


def run_doctor(
    env: Mapping[str, str] | None = None,
    *,
    skip: Collection[str] = (),
    cwd: Path | None = None,
    session: requests.Session | None = None,
) -> list[Check]:
    """Every check, in order. Skipped checks (and those needing one) pass as skipped; a check
    whose prerequisite failed fails as not checked."""
    unknown = sorted(set(skip) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(
            f"no check named {', '.join(unknown)}; the checks: {', '.join(CHECK_NAMES)}"
        )
    own_session = session is None
    run = Run(
        env=os.environ if env is None else env,
        session=session or new_session(15.0),
        cwd=cwd or Path.cwd(),
    )
    results: dict[str, Check] = {}
    try:
        for name, function, needs in CHECKS:
            results[name] = _one(run, name, function, needs, results, skip)
    finally:
        if own_session:
            run.session.close()
    return list(results.values())


def _one(
    run: Run,
    name: str,
    function: CheckFunction,
    needs: tuple[str, ...],
    results: Mapping[str, Check],
    skip: Collection[str],
) -> Check:
    if name in skip:
        return Check(name, True, "skipped (--skip)")
    for need in needs:
        before = results[need]
        if before.skipped:
            return Check(name, True, f"skipped: it needs {need}, which was skipped")
        if not before.ok:
            return Check(name, False, f"not checked: it needs {need}", f"fix {need} first")
    try:
        return function(run)
    except _Failed as failed:
        return Check(name, False, failed.detail, failed.fix)
    except (GuardrailsError, requests.RequestException) as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}", "see the detail")
