"""Check 8 of the canary, "no sovereign_id leakage", proven twice.

Static: no SQL constant in the modules that hold every statement the daemon and the canary run
(`ct_actors.db.queries`, `ct_actors.ops.queries`) names the column or selects a wildcard.

At run time, by PostgreSQL itself: the canary's pipeline runs under a temporary LOGIN role that
has SELECT on every relation the canary's user can grant, except that on every relation with a
sovereign_id column (the spine, and any view exposing it) it gets SELECT on the *other* columns
only. A statement that reads the column, directly or through `*`, is refused with SQLSTATE 42501
(insufficient_privilege), which fails the run. After the grants PostgreSQL is asked
(`has_column_privilege`) whether the role can read any sovereign_id column anywhere (must be
none), and pg_stat_activity shows the pipeline's sessions under the role.

The role (`ct_canary_<hex>`): NOSUPERUSER NOINHERIT NOBYPASSRLS, member of no role, a random
password sent as a SCRAM-SHA-256 verifier computed here (the password itself never reaches the
server or a log), VALID UNTIL shortly after the canary's timeout, dropped (DROP OWNED, DROP ROLE)
when the canary ends. Setting it up needs a user that may CREATE ROLE and GRANT on the outreach
and ct_actors tables (for example, run the canary with CT_DATABASE_URL of an administrator; the
pipeline itself runs as the restricted role, not as that user).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ct_actors.db.errors import StoreError
from ct_actors.ops import queries as oq
from ct_actors.ops.canary_facts import RoleProof, StaticScan
from ct_actors.ops.db import OpsDb

GUARDED_COLUMN = "sovereign_id"
SPINE = ("outreach", "outreach")
# What the pipeline writes, beyond the SELECT every relation gets (column-level where guarded).
WRITES: dict[tuple[str, str], str] = {
    ("outreach", "company_target"): "INSERT, UPDATE",
    ("outreach", "company_target_errors"): "INSERT",
    ("ct_actors", "lease"): "INSERT, UPDATE, DELETE",
    ("ct_actors", "tool_usage"): "INSERT, UPDATE",
    # The write notes PASS/FAIL outcomes whose log line is owed; the writer deletes the notes.
    ("ct_actors", "outcome_log"): "INSERT, UPDATE, DELETE",
}
REQUIRED: tuple[tuple[str, str], ...] = (SPINE, *WRITES)
ROLE_PREFIX = "ct_canary_"
# The claim's FOR NO KEY UPDATE needs UPDATE on at least one spine column; this one if it
# exists (docs/operations.md), else outreach_id. The daemon never updates the spine.
LOCK_COLUMNS: tuple[str, ...] = ("updated_at", "outreach_id")


class IsolationError(Exception):
    """The restricted role could not be set up; the message says what is needed."""


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """The verifier PostgreSQL stores for `password` (RFC 5802/7677), as accepted by
    CREATE ROLE ... PASSWORD: the server never sees the password itself. `password` must be
    ASCII without control characters (SASLprep is then the identity)."""
    if not password.isascii() or not password.isprintable():
        raise ValueError("password must be printable ASCII")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` logging in as `user`/`password` instead (host, port, database and options kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("user", "password", "passfile")
        ]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Relation:
    schema: str
    name: str
    kind: str
    columns: tuple[str, ...]
    guarded: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def grant_statements(
    role: str,
    relations: Iterable[Relation],
    *,
    database: str,
    grant_connect: bool,
    guarded_column: str = GUARDED_COLUMN,
) -> list[str]:
    """Every GRANT of the restricted role (pure). Raises IsolationError when a relation the
    pipeline needs is not among the grantable `relations`."""
    rels = list(relations)
    by_key = {r.key: r for r in rels}
    missing = [".".join(k) for k in REQUIRED if k not in by_key]
    if missing:
        raise IsolationError(
            "the canary's database user cannot grant SELECT on "
            + ", ".join(missing)
            + " (it needs to own them, be a superuser, or hold SELECT WITH GRANT OPTION); "
            "run `ct-actors migrate` first if they do not exist"
        )
    r = quote_ident(role)
    out: list[str] = []
    if grant_connect:
        out.append(oq.GRANT_CONNECT.format(database=quote_ident(database), role=r))
    for schema in sorted({rel.schema for rel in rels}):
        out.append(oq.GRANT_SCHEMA_USAGE.format(schema=quote_ident(schema), role=r))
    for rel in rels:
        if rel.guarded:
            readable = [c for c in rel.columns if c != guarded_column]
            if readable:
                out.append(
                    oq.GRANT_SELECT_COLUMNS.format(
                        columns=", ".join(quote_ident(c) for c in readable),
                        relation=rel.qualified,
                        role=r,
                    )
                )
        else:
            out.append(oq.GRANT_SELECT.format(relation=rel.qualified, role=r))
    spine = by_key[SPINE]
    lock = next((c for c in LOCK_COLUMNS if c in spine.columns), None)
    if lock is None:  # pragma: no cover - outreach_id is the spine's key
        raise IsolationError("outreach.outreach has no outreach_id column")
    out.append(
        oq.GRANT_LOCK_COLUMN.format(column=quote_ident(lock), relation=spine.qualified, role=r)
    )
    for key, privileges in WRITES.items():
        out.append(
            oq.GRANT_WRITE.format(privileges=privileges, relation=by_key[key].qualified, role=r)
        )
    return out


# ---------------------------------------------------------------------------------------------
# Static scan
# ---------------------------------------------------------------------------------------------
_SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WITH|GRANT|CREATE|DROP)\b", re.I)
_WILDCARD = re.compile(r"(?i)\bselect\s+(?:distinct\s+)?\*|(?<![\w)])[a-z_]\w*\.\*")


def scan_statements(modules: Sequence[ModuleType], column: str = GUARDED_COLUMN) -> StaticScan:
    """Every upper-case str constant that looks like SQL in `modules`; offending when it names
    `column` or selects a wildcard (`SELECT *`, `o.*`)."""
    statements = 0
    offending: list[str] = []
    pattern = re.compile(rf"\b{re.escape(column)}\b", re.I)
    for module in modules:
        for name, value in sorted(vars(module).items()):
            if not name.isupper() or not isinstance(value, str) or not _SQL_WORD.search(value):
                continue
            statements += 1
            where = f"{module.__name__}.{name}"
            if pattern.search(value):
                offending.append(f"{where} names {column}")
            if _WILDCARD.search(value):
                offending.append(f"{where} selects a wildcard")
    return StaticScan(
        modules=tuple(m.__name__ for m in modules),
        statements=statements,
        offending=tuple(offending),
    )


# ---------------------------------------------------------------------------------------------
# The role
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestrictedRole:
    name: str
    url: str  # logs in as the role: never print it
    relations_granted: int
    guarded_relations: tuple[str, ...]

    def __repr__(self) -> str:
        return f"RestrictedRole({self.name!r}, relations={self.relations_granted})"


async def create_restricted_role(
    db: OpsDb, url: str, *, connections: int, valid_for: float
) -> RestrictedRole:
    """Create and grant the role in one transaction (nothing is left behind on failure)."""
    name = ROLE_PREFIX + secrets.token_hex(6)
    password = secrets.token_urlsafe(24)
    valid_until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=valid_for)

    async def inspect(conn: Any) -> tuple[list[Relation], str, bool]:
        rows = await conn.fetch(oq.GRANTABLE_RELATIONS, GUARDED_COLUMN)
        relations = [
            Relation(
                r["schema_name"],
                r["relation_name"],
                r["kind"],
                tuple(r["columns"]),
                bool(r["guarded"]),
            )
            for r in rows
        ]
        connect = await conn.fetchrow(oq.CAN_GRANT_CONNECT)
        return relations, str(connect["database"]), bool(connect["grantable"])

    relations, database, grant_connect = await db.call("inspect grantable relations", inspect)
    grants = grant_statements(name, relations, database=database, grant_connect=grant_connect)
    create = oq.CREATE_ROLE.format(
        role=quote_ident(name),
        connections=int(connections),
        verifier=quote_literal(scram_sha256_verifier(password)),
        valid_until=quote_literal(valid_until.isoformat()),
    )

    async def run(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(create)
            for statement in grants:
                await conn.execute(statement)

    try:
        await db.call("create canary role", run)
    except StoreError as exc:
        if exc.sqlstate in ("42501", "0LP01"):
            raise IsolationError(
                f"cannot set up the canary's restricted role: {exc}. The canary proves check 8 "
                "by running its pipeline as a temporary role without SELECT on sovereign_id; "
                "creating it needs a database user that may CREATE ROLE and GRANT on the "
                "outreach and ct_actors tables (run the canary with CT_DATABASE_URL of an "
                "administrator)"
            ) from None
        raise
    return RestrictedRole(
        name=name,
        url=with_credentials(url, name, password),
        relations_granted=len(relations),
        guarded_relations=tuple(f"{r.schema}.{r.name}" for r in relations if r.guarded),
    )


async def role_proof(db: OpsDb, role: RestrictedRole) -> RoleProof:
    """Ask PostgreSQL what the role may read, and whether it has sessions (call while the
    pipeline's pool is still open)."""

    async def body(conn: Any) -> RoleProof:
        p = await conn.fetchrow(oq.ROLE_PRIVILEGES, GUARDED_COLUMN, role.name)
        sessions = await conn.fetchval(oq.ROLE_SESSIONS, role.name)
        return RoleProof(
            role=role.name,
            guarded_total=int(p["guarded_total"]),
            guarded_readable=int(p["guarded_readable"]),
            reads_spine=bool(p["reads_outreach_id"]) and bool(p["reads_domain"]),
            is_superuser=bool(p["is_superuser"]),
            bypasses_rls=bool(p["bypasses_rls"]),
            memberships=int(p["memberships"]),
            sessions=int(sessions),
            relations_granted=role.relations_granted,
            guarded_relations=role.guarded_relations,
        )

    return await db.call("verify canary role", body)


async def drop_role(db: OpsDb, name: str) -> None:
    async def body(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(oq.DROP_OWNED.format(role=quote_ident(name)))
            await conn.execute(oq.DROP_ROLE.format(role=quote_ident(name)))

    await db.call("drop canary role", body)
