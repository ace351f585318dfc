"""Duix/HeyGem-compatible routes: existing clients work unchanged (see ``protocol.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from actors.errors import NotFoundError
from serve_app.api.auth import tenant_of
from serve_app.api.duix import service
from serve_app.api.schemas import DUIX_SUBMIT_BODY, DuixReply, ErrorResponse
from serve_app.api.services import ApiServices, services

router = APIRouter(prefix="/easy", tags=["duix"])

# 401 (a key is required) and 413 (the 64 KiB body cap) come from the request guards in the native
# error envelope, before the Duix code runs; 404 when the Duix API is off.
_GUARDS = {401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
           404: {"model": ErrorResponse, "description": "The Duix API is not enabled"}}


def _enabled(svc: ApiServices = Depends(services)) -> ApiServices:
    if not svc.args.duix.enabled:  # off: the routes do not exist
        raise NotFoundError("the Duix API is not enabled on this deployment (duix.enabled)")
    return svc


@router.post("/submit", summary="Duix/HeyGem: submit a task (JSON body, whatever the Content-Type)",
             response_model=DuixReply, openapi_extra=DUIX_SUBMIT_BODY,
             responses={**_GUARDS, 413: {"model": ErrorResponse, "description": "Body over 64 KiB"},
                        429: {"model": DuixReply, "description": "Queue full (code 9999), with Retry-After"}})
async def duix_submit(request: Request, svc: ApiServices = Depends(_enabled)):
    return await service.submit(svc, await request.body(), tenant_of(request))


@router.get("/query", summary="Duix/HeyGem: task status; the result is published in the shared temp dir",
            response_model=DuixReply,
            responses={**_GUARDS, 422: {"model": ErrorResponse, "description": "Invalid query parameters"}})
async def duix_query(request: Request, code: str | None = None, svc: ApiServices = Depends(_enabled)):
    return await service.query(svc, code, tenant_of(request))
