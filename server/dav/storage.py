"""Radicale 3.9 storage plugin on SQLAlchemy: collections, items, sync and locking.

Each Radicale ``acquire_lock`` opens one database transaction for the request;
collections and items read and write through it, so a request's writes and
their change-log rows commit together or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ContextManager, Optional, TypeVar, cast

import radicale.item as radicale_item
from radicale import pathutils, storage, types
from radicale.item import filter as radicale_filter
from sqlalchemy.orm import Session

from server.db import Database
from server.dav import store
from server.models import DavCollection, DavItem

SYNC_TOKEN_PREFIX = "http://lockstep.invalid/ns/sync/"
HTTP_DATE = "%a, %d %b %Y %H:%M:%S GMT"
_T = TypeVar("_T")


class Collection(storage.BaseCollection):
    """A collection row seen through the current request's transaction."""

    def __init__(self, storage_: Storage, path: str, row: DavCollection | None) -> None:
        self._storage = storage_
        self._path = path
        self._row = row

    # -- identity and metadata -------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def _session(self) -> Session:
        return self._storage.session

    def read(self, query: Callable[[Session], _T]) -> _T:
        """Run ``query`` in the request's transaction, or in a short one of its own:
        Radicale renders some responses (PROPFIND) after releasing the lock."""
        session = self._storage.current_session
        if session is not None:
            return query(session)
        with self._storage.database.read() as own:
            return query(own)

    @property
    def row(self) -> DavCollection | None:
        """The collection's database row (None for the root)."""
        return self._row

    def _require_row(self) -> DavCollection:
        if self._row is None:
            raise ValueError("the root collection holds no items")
        return self._row

    def get_meta(self, key: Optional[str] = None):  # type: ignore[override]
        props = store.load_props(self._row) if self._row is not None else {}
        return props if key is None else props.get(key)

    def set_meta(self, props: Mapping[str, str]) -> None:
        store.set_props(self._session, self._require_row(), props)

    @property
    def last_modified(self) -> str:
        if self._row is None:
            return "Thu, 01 Jan 1970 00:00:00 GMT"
        return self._row.modified_at.strftime(HTTP_DATE)

    @property
    def etag(self) -> str:
        """Changes whenever an item or a property changes, without reading items."""
        if self._row is None:
            return '"root"'
        row_id = self._row.id
        revision = self.read(lambda session: store.current_revision(session, row_id))
        digest = hashlib.sha256(
            f"{self._row.id}/{revision}/{self._row.props}".encode()
        ).hexdigest()
        return f'"{digest}"'

    # -- items ----------------------------------------------------------------
    def _item(self, row: DavItem) -> radicale_item.Item:
        return radicale_item.Item(
            collection=self,
            href=row.href,
            last_modified=row.modified_at.strftime(HTTP_DATE),
            text=row.text,
            etag=row.etag,
            uid=row.uid,
            name=_top_component_name(row.text),
            component_name=row.component_name,
            time_range=(row.range_start, row.range_end),
        )

    def get_multi(
        self, hrefs: Iterable[str]
    ) -> Iterable[tuple[str, Optional[radicale_item.Item]]]:
        wanted = list(dict.fromkeys(hrefs))
        if self._row is None:
            return [(href, None) for href in wanted]
        row_id = self._row.id
        rows = self.read(lambda session: store.get_items(session, row_id, wanted))
        found = {row.href: self._item(row) for row in rows}
        return [(href, found.get(href)) for href in wanted]

    def get_all(self) -> Iterable[radicale_item.Item]:
        if self._row is None:
            return []
        row_id = self._row.id
        return [self._item(row) for row in self.read(lambda session: store.get_items(session, row_id))]

    def get_filtered(
        self, filters: Iterable[ET.Element]
    ) -> Iterable[tuple[radicale_item.Item, bool]]:
        """Same contract as Radicale's default, but the time range is an index query."""
        if not self.tag or self._row is None:
            return
        tag, start, end, simple = radicale_filter.simplify_prefilters(filters, self.tag)
        row_id = self._row.id
        rows = self.read(lambda session: store.items_in_range(session, row_id, tag, start, end))
        for row in rows:
            yield self._item(row), simple and (start <= row.range_start or row.range_end <= end)

    def has_uid(self, uid: str) -> bool:
        if self._row is None:
            return False
        row_id = self._row.id
        return self.read(lambda session: store.has_uid(session, row_id, uid))

    def upload(
        self, href: str, item: radicale_item.Item
    ) -> tuple[radicale_item.Item, Optional[radicale_item.Item]]:
        if not pathutils.is_safe_filesystem_path_component(href):
            raise pathutils.UnsafePathError(href)
        row, old = store.put_item(self._session, self._require_row(), href, store.item_data(item))
        return self._item(row), (self._item(old) if old is not None else None)

    def delete(self, href: Optional[str] = None) -> None:
        if href is None:
            store.delete_collection_tree(self._session, self._require_row().path)
            return
        if not store.delete_item(self._session, self._require_row(), href):
            raise storage.ComponentNotFoundError(href)

    # -- RFC 6578 ---------------------------------------------------------------
    def sync(self, old_token: str = "") -> tuple[str, Iterable[str]]:
        """Tokens name (collection id, change-log revision); deltas come from the log."""
        row_id = self._require_row().id
        old_id, old_revision = _parse_sync_token(old_token) if old_token else (row_id, 0)

        def query(session: Session) -> tuple[str, Iterable[str]]:
            revision = store.current_revision(session, row_id)
            token = f"{SYNC_TOKEN_PREFIX}{row_id}-{revision}"
            if old_id != row_id or old_revision > revision:
                raise ValueError(f"sync token {old_token!r} does not belong to this collection")
            if not old_token:
                return token, store.all_hrefs(session, row_id)
            if old_revision == revision:
                return token, ()
            return token, store.changed_hrefs(session, row_id, old_revision)

        return self.read(query)


def _top_component_name(text: str) -> Optional[str]:
    """"VCALENDAR"/"VCARD" from the stored serialization's first line, as Radicale's
    item cache keeps it; without it every PROPFIND would parse every item."""
    first_line = text.split("\n", 1)[0].strip()
    if first_line[:6].upper() != "BEGIN:" or not first_line[6:]:
        return None  # Radicale parses the text when it needs the name
    return first_line[6:].upper()


def _parse_sync_token(token: str) -> tuple[int, int]:
    if not token.startswith(SYNC_TOKEN_PREFIX):
        raise ValueError(f"malformed sync token {token!r}")
    try:
        collection_id, revision = token[len(SYNC_TOKEN_PREFIX):].split("-", 1)
        return int(collection_id), int(revision)
    except ValueError:
        raise ValueError(f"malformed sync token {token!r}") from None


class Storage(storage.BaseStorage):
    """Radicale's whole storage contract on one SQL database."""

    def __init__(self, configuration, database: Database) -> None:  # type: ignore[no-untyped-def]
        super().__init__(configuration)
        self.database = database
        self._local = threading.local()

    @property
    def current_session(self) -> Session | None:
        return getattr(self._local, "session", None)

    @property
    def session(self) -> Session:
        session = self.current_session
        if session is None:
            raise RuntimeError("storage used outside acquire_lock")
        return cast(Session, session)

    def _collection(self, path: str, row: DavCollection | None) -> Collection:
        return Collection(self, path, row)

    @types.contextmanager
    def acquire_lock(self, mode: str, user: str = "", *args, **kwargs) -> Iterator[None]:  # type: ignore[no-untyped-def]
        """One transaction per request; writers lock the tech homes they touch."""
        if getattr(self._local, "session", None) is not None:
            yield  # nested (principal creation inside a request): same transaction
            return
        if mode == "w":
            keys = {
                store.owner_of(pathutils.strip_path(p))
                for p in (kwargs.get("path") or f"/{user}/", kwargs.get("to_path") or "")
                if p
            }
            context: ContextManager[Session] = self.database.write(keys)
        else:
            context = self.database.read()
        with context as session:
            self._local.session = session
            try:
                yield
            finally:
                self._local.session = None

    def discover(
        self,
        path: str,
        depth: str = "0",
        child_context_manager: Optional[Callable[[str, Optional[str]], ContextManager[None]]] = None,
        user_groups: set[str] = set(),  # noqa: B006 - Radicale's signature
    ) -> Iterable[types.CollectionOrItem]:
        manager = child_context_manager or _null_child_context
        sane_path = pathutils.strip_path(path)
        session = self.session
        row = store.get_collection(session, sane_path) if sane_path else None
        if sane_path and row is None:
            parent_path, _, href = sane_path.rpartition("/")
            parent = store.get_collection(session, parent_path) if parent_path else None
            if parent is None:
                return
            items = store.get_items(session, parent.id, [href])
            if items:
                yield self._collection(parent_path, parent)._item(items[0])
            return
        collection = self._collection(sane_path, row)
        yield collection
        if depth == "0":
            return
        if row is not None:
            for item_row in store.get_items(session, row.id):
                with manager(sane_path, item_row.href):
                    yield collection._item(item_row)
        for child in store.child_collections(session, sane_path):
            with manager(child.path, None):
                yield self._collection(child.path, child)

    def move(
        self, item: radicale_item.Item, to_collection: storage.BaseCollection, to_href: str
    ) -> None:
        if not pathutils.is_safe_filesystem_path_component(to_href):
            raise pathutils.UnsafePathError(to_href)
        source = cast(Collection, item.collection)
        target = cast(Collection, to_collection)
        assert item.href
        store.move_item(
            self.session, source._require_row(), item.href, target._require_row(), to_href
        )

    def create_collection(
        self,
        href: str,
        items: Optional[Iterable[radicale_item.Item]] = None,
        props: Optional[Mapping[str, str]] = None,
    ) -> tuple[storage.BaseCollection, dict[str, radicale_item.Item], list[str]]:
        sane_path = pathutils.strip_path(href)
        session = self.session
        if not props:
            row = store.ensure_collection(session, sane_path)
            return self._collection(sane_path, row), {}, []
        existing = store.get_collection(session, sane_path)
        old_hrefs = set(store.all_hrefs(session, existing.id)) if existing is not None else set()
        row = store.ensure_collection(session, sane_path, props)
        collection = self._collection(sane_path, row)
        replaced: dict[str, radicale_item.Item] = {}
        new_hrefs: list[str] = []
        written: set[str] = set()
        if items is not None and props.get("tag") in ("VCALENDAR", "VADDRESSBOOK"):
            suffix = ".ics" if props.get("tag") == "VCALENDAR" else ".vcf"
            for item in items:
                item_href = _free_href(item.uid, suffix, written)
                written.add(item_href)
                _, old = store.put_item(session, row, item_href, store.item_data(item))
                if old is not None:
                    replaced[item_href] = collection._item(old)
                else:
                    new_hrefs.append(item_href)
        for stale in sorted(old_hrefs - written):
            store.delete_item(session, row, stale)
        return collection, replaced, new_hrefs

    def verify(self) -> bool:
        """Every stored item still parses."""
        ok = True
        with self.database.read() as session:
            for row in session.query(DavItem).yield_per(500):
                try:
                    radicale_item.read_components(row.text)
                except Exception:  # noqa: BLE001 - report, keep checking
                    ok = False
        return ok


def _free_href(uid: str, suffix: str, taken: set[str]) -> str:
    """Radicale's choice for items of a whole-collection PUT: ``<uid><suffix>``, else
    the UID's hash (stable, so re-uploading the same calendar keeps every href), else
    a random name."""
    for candidate in (
        uid if uid.lower().endswith(suffix) else uid + suffix,
        radicale_item.get_etag(uid).strip('"') + suffix,
    ):
        if pathutils.is_safe_filesystem_path_component(candidate) and candidate not in taken:
            return candidate
    return radicale_item.find_available_uid(lambda h: h in taken, suffix)


@contextlib.contextmanager
def _null_child_context(path: str, href: Optional[str]) -> Iterator[None]:
    yield
