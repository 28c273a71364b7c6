"""Task persistence, scoped by owner. Every write inserts its outbox event in the same statement.

Reads are SQLAlchemy Core statements compiled once (``app/core/sql.py``). The writes are SQL
text because each is one data-modifying CTE: the task change and its outbox row commit in one
statement and one round trip, which is what makes ``POST /tasks/`` fast. Every statement filters
on ``owner_id``: an id that belongs to someone else behaves exactly like an id that does not
exist. Results are the JSON bytes the API serves (orjson), without an ORM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app.core.sql import Conn, compiled, to_json
from app.models import tasks

TASK_COLUMNS = ("id", "title", "description", "status", "created_at", "updated_at")
_COLS = ", ".join(TASK_COLUMNS)
_OWNER_AND_ID = sa.and_(tasks.c.owner_id == sa.bindparam("owner"), tasks.c.id == sa.bindparam("id"))


def _columns() -> list[sa.ColumnElement[Any]]:
    return [tasks.c[name] for name in TASK_COLUMNS]


SELECT_TASK = compiled(sa.select(*_columns()).where(_OWNER_AND_ID))
# Batched cache misses: any owners' ids in one query; the loader matches rows to (owner, id).
SELECT_TASKS_BY_IDS = compiled(
    sa.select(tasks.c.owner_id, *_columns()).where(
        tasks.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger)))
    )
)


def _list_stmt(*, by_status: bool, keyset: bool) -> str:
    stmt = sa.select(*_columns()).where(tasks.c.owner_id == sa.bindparam("owner"))
    if by_status:
        stmt = stmt.where(tasks.c.status == sa.bindparam("status"))
    if keyset:
        stmt = stmt.where(tasks.c.id > sa.bindparam("after")).order_by(tasks.c.id).limit(sa.bindparam("limit"))
    else:
        stmt = stmt.order_by(tasks.c.id).offset(sa.bindparam("skip")).limit(sa.bindparam("limit"))
    return compiled(stmt)


LIST_TASKS = {
    (by_status, keyset): _list_stmt(by_status=by_status, keyset=keyset)
    for by_status in (False, True)
    for keyset in (False, True)
}

_OUTBOX_INSERT = """
    INSERT INTO outbox (task_id, action, payload)
    SELECT id, {action}, jsonb_build_object(
        'id', id, 'title', title, 'description', description, 'status', status,
        'created_at', created_at, 'updated_at', updated_at, 'owner_id', owner_id)
    FROM t
"""

# S608: these f-strings only splice fixed column lists and SQL fragments; values are bound.
INSERT_TASK = f"""
WITH t AS (
    INSERT INTO tasks (owner_id, title, description, status)
    VALUES (%(owner)s, %(title)s, %(description)s, %(status)s)
    RETURNING {_COLS}, owner_id
), o AS ({_OUTBOX_INSERT.format(action="'created'")})
SELECT {_COLS} FROM t
"""

DELETE_TASK = f"""
WITH t AS (
    DELETE FROM tasks WHERE id = %(id)s AND owner_id = %(owner)s RETURNING {_COLS}, owner_id
), o AS ({_OUTBOX_INSERT.format(action="'deleted'")})
SELECT id FROM t
"""

_UPDATABLE = ("title", "description", "status")


def _update_sql(fields: Sequence[str]) -> str:
    # Column names come from the fixed _UPDATABLE set, never from user input.
    sets = ", ".join(f"{name} = %({name})s" for name in fields if name in _UPDATABLE)
    qualified = ", ".join(f"tasks.{c}" for c in (*TASK_COLUMNS, "owner_id"))
    action = "CASE WHEN status = 'done' AND old_status <> 'done' THEN 'completed' ELSE 'updated' END"
    return f"""
WITH old AS (
    SELECT id, status FROM tasks WHERE id = %(id)s AND owner_id = %(owner)s FOR UPDATE
), t AS (
    UPDATE tasks SET {sets}, updated_at = now() FROM old WHERE tasks.id = old.id
    RETURNING {qualified}, old.status AS old_status
), o AS ({_OUTBOX_INSERT.format(action=action)})
SELECT {_COLS} FROM t
"""


_UPDATE_CACHE: dict[tuple[str, ...], str] = {}


def task_dict(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(TASK_COLUMNS, row, strict=True))


def task_json(row: Sequence[Any]) -> bytes:
    return to_json(task_dict(row))


async def get_task_json(conn: Conn, owner: int, task_id: int) -> bytes | None:
    cur = await conn.execute(SELECT_TASK, {"owner": owner, "id": task_id})
    row = await cur.fetchone()
    return None if row is None else task_json(row)


async def get_tasks_json(conn: Conn, keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """``{(owner, id): bytes}`` for the keys that exist (a key with another owner does not)."""
    if len(keys) == 1:
        owner, task_id = keys[0]
        body = await get_task_json(conn, owner, task_id)
        return {} if body is None else {keys[0]: body}
    wanted = set(keys)
    cur = await conn.execute(SELECT_TASKS_BY_IDS, {"ids": list({task_id for _owner, task_id in keys})})
    found: dict[tuple[int, int], bytes] = {}
    for row in await cur.fetchall():
        key = (row[0], row[1])
        if key in wanted:
            found[key] = task_json(row[1:])
    return found


async def list_tasks(
    conn: Conn, *, owner: int, skip: int, limit: int, after: int | None, status: str | None
) -> tuple[bytes, int | None]:
    """JSON array of the owner's tasks and the id to continue after (None on the last page)."""
    params: dict[str, Any] = {"owner": owner, "limit": limit, "status": status}
    if after is not None:
        params["after"] = after
    else:
        params["skip"] = skip
    cur = await conn.execute(LIST_TASKS[(status is not None, after is not None)], params)
    rows = await cur.fetchall()
    next_after = rows[-1][0] if len(rows) == limit and rows else None
    return to_json([task_dict(r) for r in rows]), next_after


async def create_task(conn: Conn, owner: int, title: str, description: str | None, status: str) -> tuple[int, bytes]:
    params = {"owner": owner, "title": title, "description": description, "status": status}
    cur = await conn.execute(INSERT_TASK, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0], task_json(row)


async def update_task(conn: Conn, owner: int, task_id: int, changes: dict[str, Any]) -> bytes | None:
    fields = tuple(sorted(k for k in changes if k in _UPDATABLE))
    if not fields:
        return await get_task_json(conn, owner, task_id)
    sql = _UPDATE_CACHE.get(fields)
    if sql is None:
        sql = _UPDATE_CACHE[fields] = _update_sql(fields)
    cur = await conn.execute(sql, {"owner": owner, "id": task_id, **{k: changes[k] for k in fields}})
    row = await cur.fetchone()
    return None if row is None else task_json(row)


async def delete_task(conn: Conn, owner: int, task_id: int) -> bool:
    cur = await conn.execute(DELETE_TASK, {"owner": owner, "id": task_id})
    return await cur.fetchone() is not None


# --- Idempotency keys (scoped per owner) -----------------------------------------------------


def request_fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim_idempotency_key(conn: Conn, owner: int, key: str, fingerprint: str) -> bool:
    """Insert the key inside the caller's transaction. False when the owner already used it.

    A concurrent request with the same key blocks on the primary key until the first
    transaction ends, then sees the conflict: the unique constraint resolves the race.
    """
    cur = await conn.execute(
        "INSERT INTO idempotency_keys (owner_id, key, request_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT (owner_id, key) DO NOTHING RETURNING key",
        (owner, key, fingerprint),
    )
    return await cur.fetchone() is not None


async def release_idempotency_key(conn: Conn, owner: int, key: str) -> None:
    """Forget a key claimed in this transaction (its request changed nothing)."""
    await conn.execute("DELETE FROM idempotency_keys WHERE owner_id = %s AND key = %s", (owner, key))


async def stored_idempotent_response(conn: Conn, owner: int, key: str) -> tuple[str, int | None, bytes | None] | None:
    cur = await conn.execute(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE owner_id = %s AND key = %s",
        (owner, key),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return row[0], row[1], None if row[2] is None else bytes(row[2])


async def store_idempotent_response(
    conn: Conn, owner: int, key: str, status_code: int, body: bytes, task_id: int
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = %s, response = %s, task_id = %s WHERE owner_id = %s AND key = %s",
        (status_code, body, task_id, owner, key),
    )
