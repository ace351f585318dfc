"""Versioned schema migrations of the PostgreSQL job store.

Migrations are the files ``migrations/NNNN_name.sql`` (``NNNN`` is the version), applied in order by
every store at start. Several replicas start at once, so the whole run happens in ONE transaction
that first takes a transaction-scoped advisory lock: the first replica applies what is missing and
records it in ``schema_version``; the others wait on the lock, then find nothing left to do. A
failing migration rolls back with everything applied in that run, and the lock is released with it.

Rules for new files: never edit an applied one (add the next number); keep each idempotent
(``IF NOT EXISTS``, ``CREATE OR REPLACE``) and additive, so that a blue cluster still running the
previous release keeps working on a schema its green successor has moved on.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lipserve.jobs.migrations")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed 64-bit key that no other application of the database uses ("lipserve" in ASCII).
ADVISORY_LOCK_KEY = 0x6C69707365727665
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files are malformed or one of them failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}: {found[version].name}, {path.name}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def migrate(conn, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the missing migrations on ``conn`` (a psycopg connection in autocommit mode); returns
    the versions this call applied (empty when another replica got there first)."""
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute(_VERSION_TABLE)
        done = {row[0]: row[1] for row in conn.execute("SELECT version, sha256 FROM schema_version")}
        for mig in migrations:
            if mig.version in done:
                if done[mig.version] != mig.sha256:
                    log.warning("migration %s changed after it was applied; not re-applied", mig.name)
                continue
            try:
                conn.execute(mig.sql)
            except Exception as exc:
                raise MigrationError(f"migration {mig.name} failed: {exc}") from exc
            conn.execute("INSERT INTO schema_version (version, name, sha256) VALUES (%s, %s, %s)",
                         (mig.version, mig.name, mig.sha256))
            applied_now.append(mig.version)
        newer = [v for v in done if v > max((m.version for m in migrations), default=0)]
        if newer:  # a newer release migrated the database: fine as long as migrations are additive
            log.info("database schema has versions %s that this release does not know", sorted(newer))
    if applied_now:
        log.info("applied job store migrations %s", applied_now)
    return applied_now


def schema_version(conn) -> int:
    """The highest applied version (0 before the first migration)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
