"""Duix/HeyGem-compatible routes: existing clients work unchanged (see ``protocol.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from actors.errors import NotFoundError
from serve_app.api.auth import tenant_of
from serve_app.api.duix import service
from serve_app.api.services import ApiServices, services

router = APIRouter(prefix="/easy", tags=["duix"])


def _enabled(svc: ApiServices = Depends(services)) -> ApiServices:
    if not svc.args.duix.enabled:  # off: the routes do not exist
        raise NotFoundError("the Duix API is not enabled on this deployment (duix.enabled)")
    return svc


@router.post("/submit", summary="Duix/HeyGem: submit a task (JSON body, whatever the Content-Type)")
async def duix_submit(request: Request, svc: ApiServices = Depends(_enabled)):
    return await service.submit(svc, await request.body(), tenant_of(request))


@router.get("/query", summary="Duix/HeyGem: task status; the result is published in the shared temp dir")
async def duix_query(request: Request, code: str | None = None, svc: ApiServices = Depends(_enabled)):
    return await service.query(svc, code, tenant_of(request))
