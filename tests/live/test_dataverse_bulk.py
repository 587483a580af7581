"""The sweep's paged reads: one page in memory at a time, and lone surrogates still replaced.

The client here only hands out pages (real ``requests.Response`` objects); paging against the
sandbox over HTTPS is covered by tests/integration/test_reconcile.py.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import requests

from guardrails.clients.dataverse_bulk import iter_rows

API = "https://contoso.crm.dynamics.com/api/data/v9.2"


def response(content: bytes, charset: str | None = "utf-8") -> requests.Response:
    answer = requests.Response()
    answer.status_code = 200
    answer.encoding = charset
    answer._content = content
    return answer


class Row(dict[str, Any]):
    """A row that can be watched with a weak reference."""


class WatchedPage(requests.Response):
    """A page whose rows are handed out as they are, so the test can see when they are gone."""

    def __init__(self, rows: list[Row], link: str | None) -> None:
        super().__init__()
        self.status_code = 200
        self.encoding = "utf-8"
        self._content = json.dumps({"value": [dict(r) for r in rows]}).encode()
        self.rows = rows
        self.link = link

    def json(self, **kwargs: Any) -> Any:
        return {"value": self.rows, "@odata.nextLink": self.link}


class Pages:
    """Hands out WatchedPages; before each, notes how many rows of the last one are alive."""

    def __init__(self, pages: int, rows: int) -> None:
        self.left = pages
        self.rows = rows
        self.watched: list[weakref.ref[Row]] = []
        self.alive_when_reading: list[int] = []

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.alive_when_reading.append(sum(1 for ref in self.watched if ref() is not None))
        self.left -= 1
        rows = [Row(mailboxid=f"{self.left}-{i}") for i in range(self.rows)]
        self.watched = [weakref.ref(row) for row in rows]
        return WatchedPage(rows, f"{API}/mailboxes?$skiptoken={self.left}" if self.left else None)


class OnePage:
    def __init__(self, content: bytes, charset: str | None = "utf-8") -> None:
        self.content = content
        self.charset = charset

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return response(self.content, self.charset)


def test_the_previous_page_is_let_go_before_the_next_is_read() -> None:
    client = Pages(pages=3, rows=50)
    seen = 0
    for row in iter_rows(client, "mailboxes", select=("mailboxid",)):  # type: ignore[arg-type]
        assert isinstance(row, Row)  # a page without escapes is used as parsed, not copied
        seen += 1
    assert seen == 150
    # Only the row the loop above still held; the page itself was gone.
    assert client.alive_when_reading == [0, 1, 1]


def test_a_lone_surrogate_in_a_page_is_replaced_and_a_pair_is_kept() -> None:
    content = b'{"value": [{"name": "bad \\ud800 name", "emailaddress": "\\ud83d\\ude00@x.com"}]}'
    (row,) = iter_rows(OnePage(content), "mailboxes", select=("name",))  # type: ignore[arg-type]
    assert row == {"name": "bad \ufffd name", "emailaddress": "\U0001f600@x.com"}


def test_a_page_without_escapes_is_read_unchanged() -> None:
    rows = [{"name": "Adele Vance", "emailaddress": "adele@contoso.com", "n": 2}]
    content = json.dumps({"value": rows}).encode()
    found = list(iter_rows(OnePage(content), "mailboxes", select=("name",)))  # type: ignore[arg-type]
    assert found == rows


def test_a_page_in_another_charset_is_scrubbed_without_an_escape() -> None:
    """UTF-7 spells a lone surrogate without a backslash: only UTF-8 is taken on trust."""
    content = b'{"value": [{"name": "bad +2AA- name"}]}'
    page = OnePage(content, charset="utf-7")
    (row,) = iter_rows(page, "mailboxes", select=("name",))  # type: ignore[arg-type]
    assert row == {"name": "bad \ufffd name"}
