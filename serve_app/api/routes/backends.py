"""``GET /v1/backends``: the generator backends this deployment serves (for the studio's picker)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve_app.api.errors import responses
from serve_app.api.schemas import BackendList
from serve_app.api.services import ApiServices, services

router = APIRouter(prefix="/v1/backends", tags=["backends"])


@router.get("", response_model=BackendList, responses=responses(),
            summary="Generator backends served by this deployment; a job's backend must be one of them")
async def list_backends(svc: ApiServices = Depends(services)):
    served = list(svc.args.served_generators())
    return {"backends": served, "default": served[0]}
