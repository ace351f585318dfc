"""``/v1/avatars``: register a template once; later jobs pass its ``avatar_id``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from actors.errors import InvalidParameterError
from serve_app.api.auth import tenant_of
from serve_app.api.errors import responses
from serve_app.api.forms import read_form
from serve_app.api.schemas import AvatarView
from serve_app.api.services import ApiServices, services

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])


@router.post("", status_code=201, response_model=AvatarView, responses=responses(401, 413, 422),
             summary="Register a template video once; jobs pass avatar_id")
async def register_avatar(request: Request, svc: ApiServices = Depends(services)):
    form = await read_form(request, files=("video",), fields=())
    video = form.get("video")
    if not isinstance(video, UploadFile):
        raise InvalidParameterError("multipart field 'video' (a file) is required", path="video")
    return await svc.intake.register_avatar(video, tenant_of(request))
