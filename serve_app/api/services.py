"""What the routes need from the deployment that serves them, handed over as one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi import Request

from serve_app.api.intake import JobIntake
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


def services(request: Request) -> ApiServices:
    """FastAPI dependency: the services of the app serving this request."""
    return request.app.state.get_services()
