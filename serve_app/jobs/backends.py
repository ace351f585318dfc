"""Opening the configured job store backend."""

from __future__ import annotations

from serve_app.jobs.store import JobStore


class StoreConfigError(ValueError):
    """The store settings name a backend that cannot be used as configured."""


def open_job_store(kind: str, database: str) -> JobStore:
    """``local``: this process opens the SQLite file (one machine). ``actor``: one detached store
    actor on the head node owns it (``store_actor.py``)."""
    if kind == "actor":
        import ray

        from serve_app.jobs.store_actor import RemoteJobStore, store_actor

        actor = store_actor(database)
        actual = ray.get(actor.database_path.remote())
        if actual != database:  # one store per cluster: two apps must not disagree silently
            raise StoreConfigError(f"the cluster's job store actor uses {actual}, not {database}")
        return RemoteJobStore(actor)
    from serve_app.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(database)
