"""Probes: ``/healthz`` (alive) and ``/readyz`` (a warm pipeline replica is running)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.api.schemas import Health, Readiness
from serve_app.api.services import ApiServices, services

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Ready only when a warm pipeline replica is running")
async def readyz(svc: ApiServices = Depends(services)):
    ready, details = await svc.readiness()
    if not ready:
        return JSONResponse({"status": "not_ready", **details}, status_code=503)
    return {"status": "ready", **details}
