"""The HTML report in a real headless Chromium: rendered, sorted by its own script, screenshot.

`make test` installs Chromium from the distribution's packages when it is missing. The page,
its screenshot and a PDF print of it are left in tests/artifacts/ for people to look at.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from guardrails.report.page import SCRIPT, STYLE
from tests.report.conftest import HOSTILE_HTML, Tenant, run_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """Tags, attributes, text and the mailbox table's rows, as a browser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: list[str] = []
        self.sorted_by: str | None = None
        self.aria_sort: dict[str, str] = {}
        self._key: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "tr" and found.get("data-mailbox-id"):
            self.rows.append(str(found["data-mailbox-id"]))
        if tag == "table" and found.get("id") == "mailboxes":
            self.sorted_by = found.get("data-sorted-by")
        if tag == "th" and found.get("aria-sort"):
            self.aria_sort[str(found.get("data-key"))] = str(found["aria-sort"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium found: `make test` installs it (apt-get install -y chromium)")


def _browse(page: Path, profile: Path, *args: str, fragment: str = "") -> str:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--run-all-compositor-stages-before-draw",
        *args,
        page.as_uri() + fragment,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def pages(tenant: Tenant, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report and the preview as HTML, written to tests/artifacts/."""
    env = tenant.environment
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AzureWebJobsStorage", "GUARDRAILS_STORAGE"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        ARTIFACTS.mkdir(exist_ok=True)
        report, preview = ARTIFACTS / "report.html", ARTIFACTS / "report-preview.html"
        assert run_report(report, "--format", "html")[0] == 0
        assert run_report(preview, "--format", "html", "--policy", str(tenant.candidate))[0] == 0
    return {"report": report, "preview": preview}


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_page_is_self_contained_and_its_policy_admits_only_its_own_code(
    pages: dict[str, Path],
) -> None:
    source = pages["report"].read_text(encoding="utf-8")
    page = _Page(source)
    for tag, attrs in page.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert not re.search(r"url\(|@import|https?://(?!127\.0\.0\.1)", STYLE + SCRIPT)
    csp = next(
        a["content"] for _, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert csp is not None
    assert f"script-src '{_digest(SCRIPT)}'" in csp
    assert f"style-src '{_digest(STYLE)}'" in csp
    assert "default-src 'none'" in csp
    assert f"<script>{SCRIPT}</script>" in source and f"<style>{STYLE}</style>" in source


def test_a_hostile_mailbox_name_is_shown_as_text_in_a_real_browser(
    pages: dict[str, Path], tmp_path: Path
) -> None:
    source = pages["report"].read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in source
    assert HOSTILE_HTML not in source
    dom = _Page(_browse(pages["report"], tmp_path / "profile", "--dump-dom"))
    assert not [tag for tag, _ in dom.tags if tag == "img"]
    assert HOSTILE_HTML in "".join(dom.text)  # the characters, on screen
    assert "Hijack suspect" in "".join(dom.text)


def test_the_script_sorts_the_table_in_a_real_browser(
    tenant: Tenant, pages: dict[str, Path], tmp_path: Path
) -> None:
    served = _Page(pages["report"].read_text(encoding="utf-8")).rows
    names = {tenant.mailboxes[who]: who for who in tenant.mailboxes}
    # As served: hijack suspects first, then by name.
    assert {names[row] for row in served[:2]} == {"Adele Vance", "Support"}

    ascending = _Page(
        _browse(pages["report"], tmp_path / "a", "--dump-dom", fragment="#sort=mailbox_name")
    )
    assert ascending.sorted_by == "mailbox_name"
    assert ascending.aria_sort == {"mailbox_name": "ascending"}
    order = [names[row] for row in ascending.rows]
    assert sorted(order) == sorted(names[row] for row in served)
    words = [name for name in order if name[0].isalpha()]  # symbols collate by locale rules
    assert words == sorted(words, key=str.lower)
    assert words[0] == "Adele Vance" and words[-1] == "Support"

    descending = _Page(
        _browse(pages["report"], tmp_path / "d", "--dump-dom", fragment="#sort=-mailbox_name")
    )
    assert descending.sorted_by == "-mailbox_name"
    assert [names[row] for row in descending.rows] == order[::-1]

    by_findings = _Page(
        _browse(pages["preview"], tmp_path / "f", "--dump-dom", fragment="#sort=-candidate")
    )
    assert by_findings.aria_sort == {"candidate": "descending"}
    # Adele has a finding only under the candidate; the sort put her among those with one.
    listed = [names[row] for row in by_findings.rows]
    assert listed.index("Adele Vance") < listed.index("Pradeep Gupta")


def test_screenshot_and_print(pages: dict[str, Path], tmp_path: Path) -> None:
    """The artifacts people look at: a screenshot of the preview and the report printed."""
    shot = ARTIFACTS / "report.png"
    pdf = ARTIFACTS / "report.pdf"
    for stale in (shot, pdf):
        stale.unlink(missing_ok=True)
    _browse(pages["preview"], tmp_path / "s", f"--screenshot={shot}")
    _browse(pages["report"], tmp_path / "p", f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = (
        int.from_bytes(shot.read_bytes()[16:20]),
        int.from_bytes(shot.read_bytes()[20:24]),
    )
    assert (width, height) == (1400, 1000)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert pdf.read_bytes().count(b"/Type /Page") >= 1
