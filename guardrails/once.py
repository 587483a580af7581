"""A value built at most once, on first use, however many threads ask for it together.

Start-up builds only what the first message needs; what some paths need (the Table Storage
client, Jinja's environments, the app's own `WhoAmI`) is built by the first caller that needs it,
and every other caller, arriving meanwhile or later, gets the same object. Pure: no I/O of its
own, so the core (templates) and the clients share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class Once(Generic[V]):
    """A value loaded at most once. Whoever holds the same `Once` shares the value: a client and
    its `patient` copies, for one (a copy shares this object, not a snapshot of it)."""

    def __init__(self) -> None:
        self._value: V | None = None
        self._lock = threading.Lock()

    @property
    def known(self) -> V | None:
        """The value if it was loaded (never loads)."""
        return self._value

    def get(self, load: Callable[[], V]) -> V:
        """The value, loaded by `load` if no caller loaded it yet; a load that raises leaves it
        unloaded, for the next caller to try again."""
        with self._lock:
            if self._value is None:
                self._value = load()
            return self._value
