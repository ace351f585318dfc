"""``/v1/avatars``: register a template once; later jobs pass its ``avatar_id``; list them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile

from actors.errors import InvalidParameterError
from serve_app.api.auth import tenant_of
from serve_app.api.errors import responses
from serve_app.api.forms import read_form
from serve_app.api.schemas import AVATAR_BODY, AvatarList, AvatarView
from serve_app.api.services import ApiServices, services
from serve_app.jobs.avatar_registry import list_avatars

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])


@router.post("", status_code=201, response_model=AvatarView, responses=responses(401, 413, 422),
             openapi_extra=AVATAR_BODY,
             summary="Register a template video once; jobs pass avatar_id")
async def register_avatar(request: Request, svc: ApiServices = Depends(services)):
    form = await read_form(request, files=("video",), fields=())
    video = form.get("video")
    if not isinstance(video, UploadFile):
        raise InvalidParameterError("multipart field 'video' (a file) is required", path="video")
    return await svc.intake.register_avatar(video, tenant_of(request))


@router.get("", response_model=AvatarList, responses=responses(401), summary="Registered avatars, newest first")
async def avatars(request: Request, limit: int = Query(100, ge=1, le=1000), svc: ApiServices = Depends(services)):
    registered = svc.storage.registered_dir(tenant_of(request).name)
    return {"avatars": await svc.intake.io.run(list_avatars, registered, limit)}
