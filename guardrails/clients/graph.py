"""Microsoft Graph sendMail, from the one sender mailbox the app is allowed to use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from guardrails.clients.http import ApiClient


@dataclass(frozen=True, slots=True)
class Mail:
    sender: str
    to: tuple[str, ...]
    subject: str
    html: str
    cc: tuple[str, ...] = ()

    def body(self) -> dict[str, object]:
        return {
            "message": {
                "subject": self.subject,
                "body": {"contentType": "HTML", "content": self.html},
                "toRecipients": _recipients(self.to),
                "ccRecipients": _recipients(self.cc),
            },
            "saveToSentItems": False,
        }


def _recipients(addresses: Sequence[str]) -> list[dict[str, dict[str, str]]]:
    return [{"emailAddress": {"address": address}} for address in addresses]


class GraphClient(ApiClient):
    service = "Graph"

    def send_mail(self, mail: Mail) -> None:
        self.request(
            "POST",
            f"v1.0/users/{quote(mail.sender)}/sendMail",
            json=mail.body(),
            headers={"Content-Type": "application/json"},
            expect=(202,),
        )
