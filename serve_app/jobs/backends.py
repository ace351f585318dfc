"""Opening the configured job store backend."""

from __future__ import annotations

import os
from typing import Protocol

from serve_app.jobs.store import JobStore

DATABASE_URL_ENV = "LIPSERVE_DATABASE_URL"


class StoreConfigError(ValueError):
    """The store settings name a backend that cannot be used as configured."""


def database_url_from_env(default: str | None = None) -> str | None:
    """``LIPSERVE_DATABASE_URL`` if set and not empty, else ``default``. On Kubernetes the variable
    comes from a Secret (k8s/postgres.yaml), so the password never appears in the Serve config."""
    return os.environ.get(DATABASE_URL_ENV, "").strip() or default


def postgres_url(configured: str | None) -> str:
    """The PostgreSQL connection URL for ``job_store: postgres``: config ``database_url`` first,
    then the environment; refuses a missing one or an SQLite path."""
    url = (configured or "").strip() or database_url_from_env()
    if not url:
        raise StoreConfigError(f"job_store: postgres needs database_url or the {DATABASE_URL_ENV} environment variable")
    if not url.startswith(("postgresql://", "postgres://")):
        raise StoreConfigError("job_store: postgres needs a postgresql:// URL as database_url "
                               f"(got a value starting {url.split(':', 1)[0][:16]!r})")
    return url


class StoreSettings(Protocol):
    """What selects and locates the store (``LipserveArgs`` has these)."""

    job_store: str  # local | actor | postgres
    database_url: str | None  # a postgresql:// URL, or an SQLite file

    @property
    def database_path(self) -> str:  # the SQLite file of local / actor
        ...


def open_job_store(settings: StoreSettings) -> JobStore:
    """The store the application's settings select: the one place ingress and pipeline replicas
    open it. ``postgres`` never falls back to an SQLite file: without a URL in the
    config or the environment it refuses to start."""
    if settings.job_store == "postgres":
        return open_store("postgres", postgres_url(settings.database_url))
    return open_store(settings.job_store, settings.database_path, getattr(settings, "store_actor", None))


def open_store(kind: str, database: str, actor_settings=None) -> JobStore:
    """``local``: this process opens the SQLite file (one machine). ``actor``: one detached store
    actor on the head node owns it (``store_actor.py``). ``postgres``: every process connects to the
    database at the URL ``database`` (``postgres_url``), so no node holds job state."""
    if kind == "postgres":
        from serve_app.jobs.postgres_store import PostgresJobStore

        return PostgresJobStore(postgres_url(database))
    if kind == "actor":
        import ray

        from serve_app.jobs.store_actor import RemoteJobStore, store_actor

        actor = store_actor(database, actor_settings)
        actual = ray.get(actor.database_path.remote())
        if actual != database:  # one store per cluster: two apps must not disagree silently
            raise StoreConfigError(f"the cluster's job store actor uses {actual}, not {database}")
        return RemoteJobStore(actor)
    if kind != "local":
        raise StoreConfigError(f"unknown job_store {kind!r}: use local, actor or postgres")
    from serve_app.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(database)
