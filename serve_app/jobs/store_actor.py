"""The job store as one Ray actor, for clusters of several nodes without a database server.

SQLite's locking (WAL) is only safe between processes of one machine, never over a network file
system. With ``job_store: actor`` every replica talks to a single detached actor pinned to the head
node, which is the only process that opens the SQLite file (on the head's persistent volume). The
actor is detached (it outlives application restarts and upgrades) and restarted by Ray if it dies;
records survive in the file. ``job_store: postgres`` removes the head node from the picture.

``RemoteJobStore`` has the same blocking methods as the other stores, so callers do not change.
"""

from __future__ import annotations

import threading

import ray

from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import STORE_METHODS

STORE_ACTOR_NAME = "lipserve-job-store"
STORE_NAMESPACE = "lipserve"


class JobStoreService:
    """Actor body: owns the only SQLite connection of the cluster."""

    def __init__(self, path: str):
        self.path = path
        self.store = SqliteJobStore(path)

    def database_path(self) -> str:
        return self.path

    def call(self, method: str, args: tuple, kwargs: dict):
        if method not in STORE_METHODS:
            raise AttributeError(f"JobStore has no remote method {method!r}")
        return getattr(self.store, method)(*args, **kwargs)


class RemoteJobStore:
    """Client with the JobStore interface; each call is one round trip to the store actor."""

    def __init__(self, actor):
        self._actor = actor

    def __getattr__(self, name: str):
        if name not in STORE_METHODS:
            raise AttributeError(name)

        def call(*args, **kwargs):
            return ray.get(self._actor.call.remote(name, args, kwargs))

        call.__name__ = name
        return call

    def wait_for_work(self, timeout: float) -> bool:
        # No events cross the actor boundary (a blocking call would stall the single-threaded
        # actor for everyone): a plain poll timeout, as the protocol allows.
        threading.Event().wait(max(0.0, float(timeout)))
        return False

    def close(self) -> None:  # the actor outlives its clients
        pass


def actor_options(settings=None) -> dict:
    """The store actor's Ray options, from ``LipserveArgs.store_actor`` (defaults without one)."""
    pin = getattr(settings, "pin_to_head", True)
    opts = {"name": STORE_ACTOR_NAME, "namespace": STORE_NAMESPACE, "lifetime": "detached", "get_if_exists": True,
            "max_restarts": getattr(settings, "max_restarts", -1),
            "max_task_retries": getattr(settings, "max_task_retries", 5), "num_cpus": 0}
    if pin:
        opts["resources"] = {"node:__internal_head__": 0.001}
    return opts


def store_actor(database_path: str, settings=None):
    """Get or create the cluster's store actor (detached, restartable, on the head by default)."""
    return ray.remote(JobStoreService).options(**actor_options(settings)).remote(database_path)
