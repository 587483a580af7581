"""Azure Service Bus through the azure-servicebus SDK: scheduled retries and the dead-letter queue.

The Functions binding receives and settles messages; this client does what the binding cannot:
schedule a byte-identical copy of a message for later (a long Retry-After, an outage), and read,
resubmit and purge the queue's dead-letter sub-queue for `guardrails dlq`. Connections follow the
Functions host's conventions for the `SERVICEBUS` connection: a connection string in
`SERVICEBUS`, or identity-based `SERVICEBUS__fullyQualifiedNamespace` with
`SERVICEBUS__credential=managedidentity` and optionally `SERVICEBUS__clientId`.

The SDK opens an AMQP link lazily and keeps it; opening costs about half a second, so one sender
per process is built on first use and reused by every message. The SDK itself is imported on first
use too (most messages never schedule a retry), so start-up does not pay for it.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from guardrails.clients.auth import MsalTokenProvider, TokenProvider, TokenProviderCredential
from guardrails.clients.http import new_session
from guardrails.errors import (
    ConfigurationError,
    PermanentServiceError,
    ServiceError,
    TransientServiceError,
)
from guardrails.settings import Credentials

if TYPE_CHECKING:
    from azure.core.exceptions import AzureError
    from azure.servicebus import ServiceBusClient, ServiceBusReceivedMessage, ServiceBusSender

SERVICE = "Service Bus"
SCOPE = "https://servicebus.azure.net/.default"


@dataclass(frozen=True, slots=True)
class ServiceBusSettings:
    queue: str
    connection_string: str | None = field(default=None, repr=False)
    namespace: str | None = None
    client_id: str | None = None


def servicebus_settings(
    environ: Mapping[str, str], *, queue: str | None = None
) -> ServiceBusSettings:
    """The connection the function's trigger uses, read the way the Functions host reads it."""
    env = {key.lower(): value.strip() for key, value in environ.items() if value.strip()}
    problems: list[str] = []
    name = queue or env.get("servicebus_queue", "")
    if not name:
        problems.append("SERVICEBUS_QUEUE is not set (the queue the Dataverse endpoint posts to)")
    connection = env.get("servicebus")
    namespace = env.get("servicebus__fullyqualifiednamespace")
    if connection and namespace:
        problems.append("both SERVICEBUS and SERVICEBUS__fullyQualifiedNamespace are set; keep one")
    elif not connection and not namespace:
        problems.append(
            "the Service Bus connection is not set: SERVICEBUS (a connection string) or "
            "SERVICEBUS__fullyQualifiedNamespace (identity-based)"
        )
    client_id = env.get("servicebus__clientid")
    credential = env.get("servicebus__credential")
    if client_id and (credential or "").lower() != "managedidentity":
        problems.append("SERVICEBUS__clientId needs SERVICEBUS__credential=managedidentity")
    if problems:
        raise ConfigurationError(problems)
    if namespace:
        namespace = namespace.removeprefix("sb://").rstrip("/")
    return ServiceBusSettings(
        queue=name, connection_string=connection, namespace=namespace, client_id=client_id
    )


def servicebus_client(
    settings: ServiceBusSettings, *, tokens: TokenProvider | None = None, retry_total: int = 2
) -> ServiceBusClient:
    from azure.servicebus import ServiceBusClient

    if settings.connection_string is not None:
        return ServiceBusClient.from_connection_string(
            settings.connection_string, retry_total=retry_total
        )
    assert settings.namespace is not None
    provider = tokens or MsalTokenProvider(
        Credentials(tenant_id=None, client_id=settings.client_id), session=new_session(10.0)
    )
    return ServiceBusClient(
        settings.namespace, TokenProviderCredential(provider), retry_total=retry_total
    )


PropertyValue = int | float | bytes | bool | str | uuid.UUID


def _properties(properties: Mapping[str, Any]) -> dict[str | bytes, PropertyValue]:
    """Application properties as AMQP can carry them (anything else travels as text)."""
    return {
        str(key): value
        if isinstance(value, int | float | bytes | bool | str | uuid.UUID)
        else str(value)
        for key, value in properties.items()
    }


def _typed(exc: AzureError, what: str) -> ServiceError:
    from azure.servicebus.exceptions import (
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
    )

    text = f"{what}: {type(exc).__name__}: {exc}"
    # Not retried by us: the request itself is wrong, or access is refused (configuration).
    permanent = (
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
    )
    if isinstance(exc, permanent):
        return PermanentServiceError(SERVICE, text)
    return TransientServiceError(SERVICE, text)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the queue's dead-letter sub-queue, as `guardrails dlq` shows it."""

    message_id: str | None
    sequence_number: int | None
    enqueued_at: datetime | None
    reason: str | None
    description: str | None
    delivery_count: int | None
    body: bytes
    properties: dict[str, Any]
    content_type: str | None


def _received(message: ServiceBusReceivedMessage) -> DeadLetter:
    properties = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        )
        for k, v in (message.application_properties or {}).items()
    }
    return DeadLetter(
        message_id=message.message_id,
        sequence_number=message.sequence_number,
        enqueued_at=message.enqueued_time_utc,
        reason=message.dead_letter_reason,
        description=message.dead_letter_error_description,
        delivery_count=message.delivery_count,
        body=b"".join(message.body),
        properties=properties,
        content_type=message.content_type,
    )


class QueueClient:
    """One queue: schedule copies onto it, send to it, and manage its dead letters."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        *,
        client_factory: Callable[[], ServiceBusClient] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        operation_timeout: float = 30.0,
    ) -> None:
        self._settings = settings
        # Without one, the SDK waits for a $management answer (a schedule) for ever: a lost
        # answer would hold this client's lock, and every invocation that schedules, until the
        # function times out. A timed-out schedule may have happened: the copy it left is a
        # duplicate the ledger recognises.
        self._timeout = operation_timeout
        self._factory = client_factory or (lambda: servicebus_client(settings))
        self._clock = clock
        self._lock = threading.Lock()
        self._client: ServiceBusClient | None = None
        self._sender: ServiceBusSender | None = None

    @property
    def queue(self) -> str:
        return self._settings.queue

    def _open(self) -> ServiceBusClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def _send_link(self) -> ServiceBusSender:
        if self._sender is None:
            self._sender = self._open().get_queue_sender(self._settings.queue)
        return self._sender

    def schedule(
        self,
        body: bytes,
        *,
        delay: float,
        message_id: str | None,
        properties: Mapping[str, Any],
        content_type: str | None,
    ) -> int:
        """A byte-identical copy of a message, due in `delay` seconds; its sequence number."""
        from azure.core.exceptions import AzureError
        from azure.servicebus import ServiceBusMessage

        message = ServiceBusMessage(
            body,
            message_id=message_id,
            content_type=content_type,
            application_properties=_properties(properties),
        )
        due = self._clock() + timedelta(seconds=delay)
        with self._lock:
            try:
                (sequence,) = self._send_link().schedule_messages(
                    message, due, timeout=self._timeout
                )
            except AzureError as exc:
                self._drop_link()
                raise _typed(exc, f"scheduling a retry on queue '{self.queue}'") from exc
        return int(sequence)

    def send(
        self,
        body: bytes,
        *,
        message_id: str | None,
        properties: Mapping[str, Any],
        content_type: str | None,
    ) -> None:
        from azure.core.exceptions import AzureError
        from azure.servicebus import ServiceBusMessage

        message = ServiceBusMessage(
            body,
            message_id=message_id,
            content_type=content_type,
            application_properties=_properties(properties),
        )
        with self._lock:
            try:
                self._send_link().send_messages(message, timeout=self._timeout)
            except AzureError as exc:
                self._drop_link()
                raise _typed(exc, f"sending to queue '{self.queue}'") from exc

    def dead_letters(self, *, limit: int = 1000) -> list[DeadLetter]:
        """Peek at the dead-letter sub-queue (nothing is locked or removed)."""
        from azure.core.exceptions import AzureError
        from azure.servicebus import ServiceBusSubQueue

        try:
            with self._open().get_queue_receiver(
                self._settings.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
            ) as receiver:
                found: list[DeadLetter] = []
                while len(found) < limit:
                    batch = receiver.peek_messages(
                        max_message_count=min(100, limit - len(found)),
                        sequence_number=(found[-1].sequence_number or 0) + 1 if found else 0,
                    )
                    if not batch:
                        break
                    found.extend(_received(message) for message in batch)
                return found
        except AzureError as exc:
            raise _typed(exc, f"reading the dead-letter queue of '{self.queue}'") from exc

    def check(self) -> int:
        """Peek at the queue (nothing is locked, received or removed): proves the namespace
        answers, the queue exists and the connection may read it. Returns how many messages
        the peek saw (0 or 1)."""
        from azure.core.exceptions import AzureError

        try:
            with self._open().get_queue_receiver(self._settings.queue) as receiver:
                return len(receiver.peek_messages(max_message_count=1))
        except AzureError as exc:
            raise _typed(exc, f"peeking at queue '{self.queue}'") from exc

    def take_dead_letters(
        self, wanted: Callable[[DeadLetter], bool], *, max_wait: float = 2.0
    ) -> Iterator[DeadLetter]:
        """Receive dead letters; each one `wanted` says yes to is yielded and then completed
        (removed), the rest are abandoned (left where they are)."""
        from azure.core.exceptions import AzureError
        from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

        try:
            with self._open().get_queue_receiver(
                self._settings.queue,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                max_wait_time=max_wait,
            ) as receiver:
                seen: set[int] = set()
                while True:
                    batch = receiver.receive_messages(max_message_count=50, max_wait_time=max_wait)
                    fresh = [m for m in batch if m.sequence_number not in seen]
                    if not fresh:
                        for message in batch:
                            receiver.abandon_message(message)
                        return
                    for message in fresh:
                        seen.add(message.sequence_number or -1)
                        letter = _received(message)
                        if wanted(letter):
                            yield letter
                            receiver.complete_message(message)
                        else:
                            receiver.abandon_message(message)
        except AzureError as exc:
            raise _typed(exc, f"taking from the dead-letter queue of '{self.queue}'") from exc

    def _drop_link(self) -> None:
        """After an error the link may be broken: the next call opens a fresh one."""
        sender, self._sender = self._sender, None
        if sender is not None:
            from azure.core.exceptions import AzureError
            from azure.servicebus.exceptions import ServiceBusError

            with contextlib.suppress(AzureError, ServiceBusError, OSError):
                sender.close()

    def close(self) -> None:
        with self._lock:
            self._drop_link()
            client, self._client = self._client, None
        if client is not None:
            client.close()
