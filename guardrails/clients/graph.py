"""Microsoft Graph mail, from the one sender mailbox the app is allowed to use.

A notification is sent as a draft with an `internetMessageId` the guardrail chooses, then sent by
id. That makes a lost answer recoverable: before sending again after an unknown outcome, the
guardrail looks the message up by that id: a sent copy means it went out, a draft is sent, and
nothing found means nothing was created. `sendMail` cannot do this (it returns no id and leaves
nothing to look up), so it would send twice or never after a lost answer. The price is one more
request per notification and the `Mail.ReadWrite` permission (scope it to the sender mailbox
with an application access policy, as `Mail.Send`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from guardrails.clients.http import ApiClient
from guardrails.errors import NotFound


@dataclass(frozen=True, slots=True)
class Mail:
    sender: str
    to: tuple[str, ...]
    subject: str
    html: str
    cc: tuple[str, ...] = ()

    def message(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "body": {"contentType": "HTML", "content": self.html},
            "toRecipients": _recipients(self.to),
            "ccRecipients": _recipients(self.cc),
        }

    def body(self) -> dict[str, object]:
        """The sendMail request body."""
        return {"message": self.message(), "saveToSentItems": False}


def _recipients(addresses: Sequence[str]) -> list[dict[str, dict[str, str]]]:
    return [{"emailAddress": {"address": address}} for address in addresses]


class GraphClient(ApiClient):
    service = "Graph"

    def send_mail(self, mail: Mail) -> None:
        """Fire and forget: for mail where a duplicate does no harm."""
        self.request(
            "POST",
            f"v1.0/users/{quote(mail.sender)}/sendMail",
            json=mail.body(),
            headers={"Content-Type": "application/json"},
            expect=(202,),
        )

    def send_once(self, mail: Mail, *, internet_message_id: str, uncertain: bool) -> None:
        """Send `mail` identified by `internet_message_id`, at most once.

        `uncertain` says an earlier attempt may have created or sent it (its answer was lost):
        then the mailbox is searched first and only what is missing is done.
        """
        draft_id: str | None = None
        if uncertain:
            found = self.find(mail.sender, internet_message_id)
            if any(not is_draft for _, is_draft in found):
                return  # it went out
            draft_id = next((message_id for message_id, _ in found), None)
        if draft_id is None:
            draft_id = self.create_draft(mail, internet_message_id=internet_message_id)
        try:
            self.send_draft(mail.sender, draft_id)
        except NotFound:
            # Sending moves the draft (a new id): a 404 after a lost answer means it was sent.
            if not any(not is_draft for _, is_draft in self.find(mail.sender, internet_message_id)):
                raise

    def create_draft(self, mail: Mail, *, internet_message_id: str) -> str:
        response = self.request(
            "POST",
            f"v1.0/users/{quote(mail.sender)}/messages",
            json={**mail.message(), "internetMessageId": internet_message_id},
            headers={"Content-Type": "application/json"},
            expect=(201,),
        )
        return str(response.json()["id"])

    def send_draft(self, sender: str, message_id: str) -> None:
        self.request(
            "POST",
            f"v1.0/users/{quote(sender)}/messages/{quote(message_id, safe='')}/send",
            expect=(202,),
        )

    def find(self, sender: str, internet_message_id: str) -> list[tuple[str, bool]]:
        """(id, is draft) of every message in the sender's mailbox with that id."""
        quoted = internet_message_id.replace("'", "''")
        response = self.request(
            "GET",
            f"v1.0/users/{quote(sender)}/messages",
            params={
                "$filter": f"internetMessageId eq '{quoted}'",
                "$select": "id,isDraft,internetMessageId",
            },
        )
        rows = response.json().get("value", [])
        return [(str(row["id"]), bool(row.get("isDraft"))) for row in rows if "id" in row]
