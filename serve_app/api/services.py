"""What the routes need from the deployment that serves them, handed over as one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

from fastapi import Request

from serve_app.api.auth import ApiKeyRing
from serve_app.api.body_limit import BodyLimits
from serve_app.api.intake import JobIntake
from serve_app.api.streams import JobWatchers
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.storage import Storage


@dataclass
class ApiServices:
    args: LipserveArgs
    store: AsyncJobStore
    storage: Storage
    intake: JobIntake
    readiness: Callable[[], Awaitable[tuple[bool, dict]]]  # (ready, details) from the Serve side
    watchers: JobWatchers | None = None
    keyring: ApiKeyRing = field(default_factory=ApiKeyRing)

    @property
    def protected_prefixes(self) -> tuple[str, ...]:
        """Where a key is needed once any key is configured: /v1, and the Duix API unless
        ``duix.auth: none`` (a legacy client on a private network)."""
        return ("/v1/",) + (("/easy/",) if self.args.duix.auth == "bearer" else ())

    @property
    def body_limits(self) -> BodyLimits:
        return BodyLimits.for_lipserve(self.args.jobs.max_upload_bytes, duix_bytes=self.args.duix.max_body_bytes)


def services(request: Request) -> ApiServices:
    """FastAPI dependency: the services of the app serving this request."""
    return request.app.state.get_services()
