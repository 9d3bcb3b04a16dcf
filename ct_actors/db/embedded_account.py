"""Who runs the embedded PostgreSQL, and whether it can reach its directories.

`initdb` and `postgres` refuse to run as root, so when we are root they run as an unprivileged
account (`choose_account`), and every directory above the data directory and the binaries must
be searchable by it (`unreachable_parent`; we never chmod a parent). Pure rules, unit-tested;
`ct_actors.db.embedded` applies them.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ACCOUNT_CANDIDATES",
    "CREATED_ACCOUNT",
    "Account",
    "choose_account",
    "unreachable_parent",
]

ACCOUNT_CANDIDATES = ("ct-actors", "postgres", "nobody")
CREATED_ACCOUNT = "ct-actors"


@dataclass(frozen=True, slots=True)
class Account:
    """Who runs initdb/postgres. `uid is None`: ourselves (we are not root)."""

    name: str
    uid: int | None = None
    gid: int | None = None
    created: bool = False


def choose_account(
    euid: int,
    data_dir_owner: int | None,
    lookup: Callable[[str], Any] = pwd.getpwnam,
    by_uid: Callable[[int], Any] = pwd.getpwuid,
) -> Account | None:
    """The account to run PostgreSQL as, or None when one has to be created.

    Not root: ourselves. Root: the (non-root) owner of an existing data directory, so that a
    cluster keeps its owner; else the first existing of ACCOUNT_CANDIDATES."""
    if euid != 0:
        return Account(name=str(euid))
    if data_dir_owner not in (None, 0):
        entry = by_uid(data_dir_owner)
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    for name in ACCOUNT_CANDIDATES:
        try:
            entry = lookup(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return Account(name, entry.pw_uid, entry.pw_gid)
    return None


def unreachable_parent(
    path: Path, uid: int, gids: Iterable[int], stat_fn: Callable[[Path], os.stat_result] = os.stat
) -> Path | None:
    """The first existing directory at or above `path` that `uid` (with groups `gids`) cannot
    search (x permission by owner/group/other class, POSIX), or None. Missing components are
    skipped: we create them."""
    groups = set(gids)
    for directory in reversed([path, *path.parents]):
        try:
            st = stat_fn(directory)
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None
