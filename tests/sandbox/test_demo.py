"""`make demo` is the first thing a newcomer runs: it must keep telling its whole story."""

from __future__ import annotations

import io

from guardrails.sandbox.demo import run_demo


def test_the_demo_runs_its_story_and_checks_itself() -> None:
    out = io.StringIO()
    assert run_demo(out) == 0, out.getvalue()[-3000:]
    text = out.getvalue()
    for line in (
        "1. Adele switches her incoming email to Forward Mailbox",
        "2. Alex sets his mailbox's address to the CEO's",
        "3. Isaiah, a System Administrator",
        "the nightly sweep: scanned",
        "guardrails report:",
        "guardrails register, again: 0 change(s)",
        "guardrails doctor",
    ):
        assert line in text, line
    assert "not as expected" not in text
