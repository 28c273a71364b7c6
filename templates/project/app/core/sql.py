"""SQLAlchemy Core statements, compiled once, executed on psycopg's async pool.

Write a statement with SQLAlchemy Core (``sa.select(users.c.id, ...)``), compile it at import
with ``compiled()`` and run it with ``fetch_one`` / ``fetch_all``: psycopg prepares it on each
pooled connection (``prepare_threshold``), so the query is parsed and planned once per
connection. Rows come back as dicts keyed by column name; ``to_json`` turns a dict (or a list
of them) into the bytes a route returns or caches. See docs/adding-a-resource.md.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from sqlalchemy.dialects import postgresql

Conn = AsyncConnection[tuple[Any, ...]]
Row = dict[str, Any]

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def compiled(stmt: sa.ClauseElement) -> str:
    """SQL text with ``%(name)s`` placeholders for the statement's bind parameters."""
    return str(stmt.compile(dialect=_DIALECT))


async def fetch_one(conn: Conn, sql: str, params: dict[str, Any]) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def fetch_all(conn: Conn, sql: str, params: dict[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def to_json(value: Any) -> bytes:
    """JSON bytes of a row, a list of rows or any JSON-able value; datetimes in RFC 3339 with
    ``Z`` for UTC, as pydantic writes them (so every resource's timestamps look the same)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)
