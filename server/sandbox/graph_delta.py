"""calendarView delta for the Graph emulator.

A round starts with ``startDateTime``/``endDateTime`` and pages through
``@odata.nextLink`` (``$skiptoken``) to a final ``@odata.deltaLink``
(``$deltatoken``). Both tokens are opaque and carry the window. The delta
state remembers the change key of every item of the view at the end of the
round, so the next round returns only items that are new or changed, and
``{"id", "@removed": {"reason": "deleted"}}`` for items that are gone or left
the window; single events changed entirely outside the window also come as
removed, as the reference warns. Expired state answers 410 ``syncStateNotFound``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import DeltaState, Store
from server.sandbox.graph_view import View


class DeltaService:
    def __init__(self, store: Store, view: View) -> None:
        self.store = store
        self.view = view

    def start(self, email: str, calendar_id: str, start: datetime, end: datetime,
              out_zone: str, page_size: int, base_path: str) -> tuple[list[dict], str, str]:
        """A first page; returns (items, link kind, token)."""
        with self.store.lock:
            if end <= start:
                raise errors.bad_request("endDateTime must be after startDateTime.",
                                         code="ErrorInvalidParameter")
            user = self.store.user(email)
            state = DeltaState(user=user.email.lower(), calendar_id=calendar_id, start=start,
                               end=end, epoch=user.delta_epoch, snapshot={}, stamp=0,
                               base_path=base_path)
            return self._round(state, out_zone, page_size)

    def resume(self, email: str, calendar_id: str, token: str, kind: str, out_zone: str,
               page_size: int) -> tuple[list[dict], str, str]:
        with self.store.lock:
            state = self.store.load_state(token, email)
            if state is None or state.calendar_id != calendar_id or \
                    (kind == "skip") != bool(state.items or state.stamp < 0):
                raise errors.sync_state_not_found()
            if kind == "skip":
                return self._page(state, page_size)
            return self._round(state, out_zone, page_size)

    def _round(self, previous: DeltaState, out_zone: str,
               page_size: int) -> tuple[list[dict], str, str]:
        """Compute the changes since ``previous`` (everything for a new round)."""
        instances = self.view.calendar_view(previous.user, [previous.calendar_id],
                                            previous.start, previous.end)
        snapshot = {inst.id: inst.change_key for inst in instances}
        items: list[dict[str, Any]] = [
            self.view.render_instance(inst, out_zone) for inst in instances
            if previous.snapshot.get(inst.id) != inst.change_key]
        removed = [i for i in previous.snapshot if i not in snapshot]
        if previous.stamp > 0:
            cal = self.store.calendars[previous.calendar_id]
            removed += [rec.id for rec in cal.events.values()
                        if rec.stamp > previous.stamp and not rec.is_master
                        and rec.id not in snapshot and rec.id not in previous.snapshot]
        items += [{"@odata.type": "#microsoft.graph.event", "id": event_id,
                   "@removed": {"reason": "deleted"}} for event_id in removed]
        state = DeltaState(user=previous.user, calendar_id=previous.calendar_id,
                           start=previous.start, end=previous.end, epoch=previous.epoch,
                           snapshot=snapshot, stamp=self.store.counter or 1, items=items,
                           base_path=previous.base_path)
        return self._page(state, page_size)

    def _page(self, state: DeltaState, page_size: int) -> tuple[list[dict], str, str]:
        page, rest = state.items[:page_size], state.items[page_size:]
        follow = DeltaState(user=state.user, calendar_id=state.calendar_id, start=state.start,
                            end=state.end, epoch=state.epoch, snapshot=state.snapshot,
                            stamp=state.stamp, items=rest, base_path=state.base_path)
        if rest:
            follow.stamp = -abs(follow.stamp)  # marks a skip state, even when items run out
            return page, "next", self.store.save_state(follow)
        follow.stamp = abs(follow.stamp)
        return page, "delta", self.store.save_state(follow)
