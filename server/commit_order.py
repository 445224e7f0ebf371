"""Reading an append-only log in commit order, on either backend.

A log row's id comes from a sequence when it is inserted, not when its transaction commits. On
PostgreSQL, two writers that do not share a lock (two techs) can commit in the opposite order:
the row with id 101 becomes visible while the row with id 100 is still in flight. A reader that
keeps a high-water mark on ids would then move past 100 and never see it. So each row also
records its transaction's id. A reader takes only rows whose transaction is older than the
oldest transaction still running, since every one of those has finished, and then nothing can
appear behind its mark. SQLite has one writer at a time: ids already follow commit order, so
every row there records transaction 0 and nothing is held back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# Larger than any transaction id: on SQLite no row waits for a writer.
_NO_WRITER_RUNNING = 2**63 - 1


class current_transaction_id(FunctionElement[int]):  # noqa: N801 - named like the SQL functions it renders
    """The writing transaction's id (PostgreSQL's 64-bit xid8, which never wraps); 0 on SQLite."""

    type = BigInteger()
    inherit_cache = True


class oldest_running_transaction(FunctionElement[int]):  # noqa: N801
    """Every transaction with a smaller id has committed or rolled back (the snapshot's xmin)."""

    type = BigInteger()
    inherit_cache = True


@compiles(current_transaction_id, "postgresql")
def _current_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "(pg_current_xact_id()::text::bigint)"


@compiles(current_transaction_id)
def _current_single_writer(element: Any, compiler: Any, **kw: Any) -> str:
    return "0"


@compiles(oldest_running_transaction, "postgresql")
def _oldest_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"


@compiles(oldest_running_transaction)
def _oldest_single_writer(element: Any, compiler: Any, **kw: Any) -> str:
    return str(_NO_WRITER_RUNNING)
