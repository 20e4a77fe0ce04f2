"""Collections: who may read and change which documents.

Every document lives in one collection. A user's personal collection (id derived from the user id,
`personal_collection_id`) holds what they upload without naming a collection; it is created on first
use and is theirs alone. Any other collection has members with a role:

| role | may |
|---|---|
| viewer | list and read its documents, search and chat over them |
| editor | also upload, replace and delete documents |
| owner | also rename it, share it (add, change, remove members) and delete it |

An API key may be scoped to some collections (`KeyGrant.collections`): its holder then reaches only
those, with at most the key's access. A collection the caller cannot read is NOT_FOUND, never
PERMISSION_DENIED, so ids do not reveal what exists.

Whenever the collections a user may read can change — a collection created or deleted, a member added,
removed or given another role — the user's membership epoch advances once the change is committed
(services/runtime/membership.py): the chat service reuses a turn's resolved collections only while the epoch
stays the same, so the change holds from the very next turn. A personal collection created on first use
advances nothing: a resolution (`listing`) creates it itself when it is missing, so no resolution ever lacked it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from services.runtime import names
from services.runtime.auth import Identity
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.runtime.ids import parse_uuid
from services.runtime.membership import MembershipEpochs
from services.runtime.pagination import SortKey

VIEWER, EDITOR, OWNER = "viewer", "editor", "owner"
ROLES = (VIEWER, EDITOR, OWNER)
_RANK = {VIEWER: 1, EDITOR: 2, OWNER: 3}
PERSONAL_NAME = "Personal"
MAX_NAME = 100
MAX_MEMBERS = 1000


def personal_collection_id(user_id: str) -> uuid.UUID:
    return uuid.UUID(names.personal_collection_id(user_id))


def collection_not_found(collection_id: str) -> NotFound:
    return NotFound(f"collection {collection_id} not found", reason="COLLECTION_NOT_FOUND",
                    collection_id=collection_id)


@dataclass(frozen=True)
class Caller:
    """Whom a document or collection access is for: the user, and an API key's limits if any."""

    user_id: str
    # the collections an API key is limited to (None: every collection the user belongs to)
    scope: frozenset[uuid.UUID] | None = None
    can_write: bool = True

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        key = identity.key
        scope = None
        if key is not None and key.collections is not None:
            scope = frozenset(ident for value in key.collections if (ident := parse_uuid(value)) is not None)
        return cls(identity.user_id, scope, identity.can_write)

    def allows(self, collection_id: uuid.UUID) -> bool:
        return self.scope is None or collection_id in self.scope

    def scope_list(self) -> list[uuid.UUID] | None:
        return sorted(self.scope) if self.scope is not None else None


# the condition "the caller may read collection <column>": membership, within a key's scope ($user, $scope)
def readable_sql(column: str, user_param: str, scope_param: str) -> str:
    return (f"{column} IN (SELECT m.collection_id FROM collection_members m WHERE m.user_id = {user_param} "
            f"AND ({scope_param}::uuid[] IS NULL OR m.collection_id = ANY({scope_param}::uuid[])))")


async def ensure_personal(conn: asyncpg.Connection | asyncpg.Pool, user_id: str) -> uuid.UUID:
    """The user's personal collection, created (with its owner) if it does not exist yet."""
    collection_id = personal_collection_id(user_id)
    await conn.execute(
        """WITH made AS (INSERT INTO collections (id, name, personal, created_by) VALUES ($1, $2, true, $3)
                         ON CONFLICT (id) DO NOTHING)
           INSERT INTO collection_members (collection_id, user_id, role) VALUES ($1, $3, 'owner')
           ON CONFLICT DO NOTHING""", collection_id, PERSONAL_NAME, user_id)
    return collection_id


async def role_of(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, collection_id: uuid.UUID) -> str | None:
    if not caller.allows(collection_id):
        return None
    return await conn.fetchval("SELECT role FROM collection_members WHERE collection_id = $1 AND user_id = $2",
                               collection_id, caller.user_id)


async def require_role(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, collection: str,
                       needed: str) -> uuid.UUID:
    """The collection's id, if the caller holds at least `needed` in it; NOT_FOUND when they cannot read
    it at all, PERMISSION_DENIED when they can but not enough (or their API key is read-only)."""
    collection_id = parse_uuid(collection)
    if collection_id is None:
        raise collection_not_found(collection)
    role = await role_of(conn, caller, collection_id)
    if role is None and collection_id == personal_collection_id(caller.user_id) and caller.allows(collection_id):
        await ensure_personal(conn, caller.user_id)  # first use: one write per user, ever
        role = await role_of(conn, caller, collection_id)
    if role is None:
        raise collection_not_found(collection)
    if _RANK[needed] > _RANK[VIEWER] and not caller.can_write:
        raise PermissionDenied("this API key is read-only: create a key with write access to upload, replace "
                               "or delete", reason="API_KEY_READ_ONLY")
    if _RANK[role] < _RANK[needed]:
        raise PermissionDenied(f"you are {role} of this collection; this needs {needed}",
                               reason="COLLECTION_ROLE_REQUIRED", role=role, needed=needed)
    return collection_id


async def upload_target(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, collection: str) -> uuid.UUID:
    """Where an upload goes: the named collection (editor needed), else the caller's personal one."""
    if collection:
        return await require_role(conn, caller, collection, EDITOR)
    return await require_role(conn, caller, str(personal_collection_id(caller.user_id)), EDITOR)


_COLUMNS = """c.id, c.name, c.personal, c.created_by, c.created_at, m.role,
              (SELECT count(*) FROM collection_members x WHERE x.collection_id = c.id) AS member_count,
              (SELECT count(*) FROM documents d WHERE d.collection_id = c.id) AS document_count"""
_BASIC_COLUMNS = "c.id, c.name, c.personal, m.role"


async def listing(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, *, full: bool = True,
                  page_size: int = MAX_MEMBERS, after: SortKey | None = None,
                  only: list[uuid.UUID] | None = None) -> tuple[list[asyncpg.Record], SortKey | None]:
    """A page of the caller's collections with their role (of `only`, if given): the personal one first, then by
    name. `full` adds the creation time and the member and document counts. The personal collection is created
    the first time it is missing (one write per user, ever)."""
    async def fetch() -> list[asyncpg.Record]:
        return await conn.fetch(
            f"""SELECT {_COLUMNS if full else _BASIC_COLUMNS}, lower(c.name) AS sort_name
                FROM collections c JOIN collection_members m ON m.collection_id = c.id
                WHERE m.user_id = $1 AND ($2::uuid[] IS NULL OR c.id = ANY($2::uuid[]))
                  AND ($3::uuid[] IS NULL OR c.id = ANY($3::uuid[]))
                  AND ($4::boolean IS NULL OR (NOT c.personal, lower(c.name), c.id) > ($4, $5, $6::uuid))
                ORDER BY NOT c.personal, lower(c.name), c.id LIMIT $7""",
            caller.user_id, caller.scope_list(), only, *(after.values if after else (None, None, None)),
            page_size + 1)

    rows = await fetch()
    personal = personal_collection_id(caller.user_id)
    first_page_without_personal = after is None and (not rows or rows[0]["id"] != personal)
    if first_page_without_personal and caller.allows(personal) and (only is None or personal in only):
        await ensure_personal(conn, caller.user_id)
        rows = await fetch()
    following = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        following = SortKey((not last["personal"], last["sort_name"], str(last["id"])))
    return rows, following


async def get(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, collection: str) -> asyncpg.Record:
    collection_id = await require_role(conn, caller, collection, VIEWER)
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM collections c JOIN collection_members m ON m.collection_id = c.id
            WHERE c.id = $1 AND m.user_id = $2""", collection_id, caller.user_id)
    if row is None:
        raise collection_not_found(collection)
    return row


def clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidArgument("a collection needs a name", reason="COLLECTION_NAME_REQUIRED")
    if len(cleaned) > MAX_NAME:
        raise InvalidArgument(f"a collection name has at most {MAX_NAME} characters", reason="COLLECTION_NAME_TOO_LONG")
    return cleaned


async def create(pool: asyncpg.Pool, epochs: MembershipEpochs, caller: Caller, name: str) -> asyncpg.Record:
    if caller.scope is not None or not caller.can_write:
        raise PermissionDenied("an API key limited to collections, or read-only, cannot create collections",
                               reason="API_KEY_SCOPE")
    collection_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO collections (id, name, created_by) VALUES ($1, $2, $3)",
                           collection_id, clean_name(name), caller.user_id)
        await conn.execute("INSERT INTO collection_members (collection_id, user_id, role) VALUES ($1, $2, 'owner')",
                           collection_id, caller.user_id)
    await epochs.advance([caller.user_id])
    return await get(pool, caller, str(collection_id))


async def rename(pool: asyncpg.Pool, caller: Caller, collection: str, name: str) -> asyncpg.Record:
    collection_id = await require_role(pool, caller, collection, OWNER)
    await _refuse_personal(pool, collection_id, "renamed")
    await pool.execute("UPDATE collections SET name = $2 WHERE id = $1", collection_id, clean_name(name))
    return await get(pool, caller, collection)


async def _refuse_personal(conn: asyncpg.Connection | asyncpg.Pool, collection_id: uuid.UUID, what: str) -> None:
    if await conn.fetchval("SELECT personal FROM collections WHERE id = $1", collection_id):
        raise FailedPrecondition(f"a personal collection cannot be {what}: create a collection to share",
                                 reason="PERSONAL_COLLECTION")


async def delete_empty(pool: asyncpg.Pool, epochs: MembershipEpochs, caller: Caller, collection: str) -> None:
    """Delete a collection that holds no documents (delete or move them first); every member loses it."""
    collection_id = await require_role(pool, caller, collection, OWNER)
    await _refuse_personal(pool, collection_id, "deleted")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT id FROM collections WHERE id = $1 FOR UPDATE", collection_id)
        count = await conn.fetchval("SELECT count(*) FROM documents WHERE collection_id = $1", collection_id)
        if count:
            raise FailedPrecondition(f"the collection still holds {count} documents: delete them first",
                                     reason="COLLECTION_NOT_EMPTY", documents=count)
        # the row lock (set_member and remove_member take it too) keeps this member list until the delete
        losing = [row["user_id"] for row in await conn.fetch(
            "SELECT user_id FROM collection_members WHERE collection_id = $1", collection_id)]
        await conn.execute("DELETE FROM collections WHERE id = $1", collection_id)
    await epochs.advance(losing)


async def members(pool: asyncpg.Pool, caller: Caller, collection: str, page_size: int,
                  after: SortKey | None = None) -> tuple[list[asyncpg.Record], SortKey | None]:
    """A page of the collection's members, oldest first."""
    collection_id = await require_role(pool, caller, collection, VIEWER)
    since, user = after.values if after else (None, None)
    rows = await pool.fetch(
        """SELECT user_id, role, added_at FROM collection_members
           WHERE collection_id = $1 AND ($2::text IS NULL OR (added_at, user_id) > ($2::timestamptz, $3))
           ORDER BY added_at, user_id LIMIT $4""", collection_id, since, user, page_size + 1)
    following = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        following = SortKey((rows[-1]["added_at"].isoformat(), rows[-1]["user_id"]))
    return list(rows), following


async def set_member(pool: asyncpg.Pool, epochs: MembershipEpochs, caller: Caller, collection: str, user_id: str,
                     role: str) -> asyncpg.Record:
    """Add a member or change their role (owner only). The last owner cannot step down."""
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}", reason="ROLE_INVALID")
    if not user_id.strip():
        raise InvalidArgument("user_id is required", reason="USER_REQUIRED")
    collection_id = await require_role(pool, caller, collection, OWNER)
    await _refuse_personal(pool, collection_id, "shared")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT id FROM collections WHERE id = $1 FOR UPDATE", collection_id)
        current = await conn.fetchval("SELECT role FROM collection_members WHERE collection_id = $1 AND user_id = $2",
                                      collection_id, user_id)
        if current is None and await conn.fetchval(
                "SELECT count(*) FROM collection_members WHERE collection_id = $1", collection_id) >= MAX_MEMBERS:
            raise FailedPrecondition(f"a collection has at most {MAX_MEMBERS} members", reason="MEMBER_LIMIT")
        if current == OWNER and role != OWNER:
            await _keep_an_owner(conn, collection_id)
        member = await conn.fetchrow(
            """INSERT INTO collection_members (collection_id, user_id, role) VALUES ($1, $2, $3)
               ON CONFLICT (collection_id, user_id) DO UPDATE SET role = EXCLUDED.role
               RETURNING user_id, role, added_at""", collection_id, user_id, role)
    # a new role leaves the collections the member reads as they were; advancing anyway costs one resolution and
    # keeps the rule whole: every write to a user's memberships advances their epoch
    await epochs.advance([user_id])
    return member


async def remove_member(pool: asyncpg.Pool, epochs: MembershipEpochs, caller: Caller, collection: str,
                        user_id: str) -> None:
    """An owner removes anyone; any member may leave. The last owner cannot leave."""
    needed = VIEWER if user_id == caller.user_id else OWNER
    collection_id = await require_role(pool, caller, collection, needed)
    if not caller.can_write:
        raise PermissionDenied("this API key is read-only: leaving a collection changes it",
                               reason="API_KEY_READ_ONLY")
    await _refuse_personal(pool, collection_id, "left")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT id FROM collections WHERE id = $1 FOR UPDATE", collection_id)
        current = await conn.fetchval("SELECT role FROM collection_members WHERE collection_id = $1 AND user_id = $2",
                                      collection_id, user_id)
        if current is None:
            raise NotFound(f"{user_id} is not a member of this collection", reason="MEMBER_NOT_FOUND")
        if current == OWNER:
            await _keep_an_owner(conn, collection_id)
        await conn.execute("DELETE FROM collection_members WHERE collection_id = $1 AND user_id = $2",
                           collection_id, user_id)
    await epochs.advance([user_id])


async def _keep_an_owner(conn: asyncpg.Connection, collection_id: uuid.UUID) -> None:
    owners = await conn.fetchval("SELECT count(*) FROM collection_members WHERE collection_id = $1 AND role = 'owner'",
                                 collection_id)
    if owners <= 1:
        raise FailedPrecondition("a collection keeps at least one owner: make someone else owner first",
                                 reason="LAST_OWNER")
