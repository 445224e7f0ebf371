"""Misdelivery of push messages, shared by the Google and Graph emulators.

Neither provider promises order, exactly-once or delivery at all (Google's
watch channels, Graph's change notifications), so convergence tests make the
pipe misbehave: the next ``drop`` messages are lost, the next ``duplicate`` are
sent twice, the next ``reorder`` are held back and then sent newest first.
A message is any dataclass with an ``error`` field (the emulator's record of it).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Message = TypeVar("Message")
DROPPED = "dropped by an injected fault"


@dataclass
class DeliveryFaults(Generic[Message]):
    drop: int = 0
    duplicate: int = 0
    reorder: int = 0
    held: list[Message] = field(default_factory=list)

    def route(self, note: Message) -> list[Message]:
        """What to deliver now in place of ``note`` (nothing, it twice, or held ones reversed)."""
        if self.drop > 0:
            self.drop -= 1
            note.error = DROPPED  # type: ignore[attr-defined]
            return []
        if self.reorder > 0:
            self.reorder -= 1
            self.held.append(note)
            if self.reorder > 0:
                return []
            released, self.held = list(reversed(self.held)), []
            return released
        if self.duplicate > 0:
            self.duplicate -= 1
            return [note, copy.deepcopy(note)]
        return [note]


class Misdelivery(Generic[Message]):
    """Thread-safe holder of the current :class:`DeliveryFaults` of one push pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults: DeliveryFaults[Message] = DeliveryFaults()

    def add(self, *, drop: int = 0, duplicate: int = 0, reorder: int = 0) -> None:
        with self._lock:
            self.faults.drop += drop
            self.faults.duplicate += duplicate
            self.faults.reorder += reorder

    def route(self, note: Message) -> list[Message]:
        """The messages to process for ``note``; a dropped one is returned alone, marked,
        so that it is recorded but not sent."""
        with self._lock:
            routed = self.faults.route(note)
        if not routed and getattr(note, "error", None) == DROPPED:
            return [note]
        return routed

    def clear(self) -> list[Message]:
        """Faithful delivery again; returns the held messages, newest first, to send now."""
        with self._lock:
            held = list(reversed(self.faults.held))
            self.faults = DeliveryFaults()
        return [dataclasses.replace(note, error=None) for note in held]  # type: ignore[type-var]


