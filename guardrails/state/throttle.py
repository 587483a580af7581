"""At most N notifications per mailbox per window, counted across every instance.

One entity per mailbox holds the send times inside the window; each admission is an
etag-conditional update, so two instances admitting at once cannot both take the last slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from guardrails.clients.tables import Entity, EntityChanged, EntityExists, Table

_ROW = "notifications"
_RACES = 8


class SharedThrottle:
    def __init__(
        self,
        table: Table,
        *,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._limit = limit
        self._window = window
        self._clock = clock

    def allow(self, mailbox_id: str) -> bool:
        """Take a slot for `mailbox_id` if one is free in the window; False when throttled."""
        for _ in range(_RACES):
            now = self._clock()
            current = self._table.get(mailbox_id, _ROW)
            sent: list[float] = []
            if current is not None:
                raw = current.properties.get("sent")
                loaded = json.loads(raw) if isinstance(raw, str) else []
                sent = [float(t) for t in loaded if now - float(t) < self._window]
            if len(sent) >= self._limit:
                return False
            entity = Entity(mailbox_id, _ROW, {"sent": json.dumps([*sent, now])})
            try:
                if current is None:
                    self._table.create(entity)
                else:
                    assert current.etag is not None
                    self._table.update(entity, etag=current.etag)
            except (EntityExists, EntityChanged):
                continue  # another instance admitted one meanwhile: count again
            return True
        return False  # so contended that no slot could be taken: treat as throttled
