"""``/v1/jobs/{id}/hls/``: the job's live HLS stream while it renders (and after, until it is removed).

``index.m3u8`` is a standard EVENT media playlist of fMP4 segments (``#EXT-X-MAP:URI="init.mp4"``,
relative ``seg_NNNNN.m4s`` URIs, ``#EXT-X-ENDLIST`` once every segment is in it), written by the
pipeline replica as segments finish (``actors/live_hls.py``) and read here from the shared storage.
Before the first segment is published the playlist answers 409 ``result_not_ready`` (retryable:
ask again in a second). A player that cannot send headers (the browser's own HLS) may pass the API
key as ``?access_token=`` on these routes only (``serve_app/api/auth.py``).
"""

from __future__ import annotations

import asyncio

import re

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from actors.errors import NotFoundError, ResultNotReadyError
from actors.media import hls
from serve_app.api.auth import tenant_of
from serve_app.api.errors import responses
from serve_app.api.file_response import MediaFileResponse
from serve_app.api.routes.jobs import job_or_404
from serve_app.api.services import ApiServices, services
from serve_app.jobs.records import TERMINAL, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["live stream"])


class PlaylistResponse(Response):
    media_type = hls.MIME_PLAYLIST

# The playlist grows: always revalidate. Segments never change once listed.
_PLAYLIST_HEADERS = {"Cache-Control": "no-cache"}
_SEGMENT_HEADERS = {"Cache-Control": "private, max-age=3600"}
# The paths of the two routes below: the only ones where ApiKeyMiddleware takes ``?access_token=``
# (serve_app/api/app.py passes it), because a browser's native HLS player cannot send headers.
QUERY_TOKEN_PATHS = re.compile(r"^/v1/jobs/[^/]+/hls/[^/]+$")
_ACCESS_TOKEN = Query(None, description="The API key, for players that cannot send an Authorization header")


@router.get("/{job_id}/hls/index.m3u8", response_class=MediaFileResponse,
            responses={**responses(401, 404, 409), 200: {"content": {hls.MIME_PLAYLIST: {}}, "description": "The playlist"}},
            summary="Live HLS playlist (EVENT, fMP4 segments); 409 result_not_ready until the first segment")
async def playlist(job_id: str, request: Request, access_token: str | None = _ACCESS_TOKEN,
                   svc: ApiServices = Depends(services)):
    rec = await job_or_404(svc, job_id, tenant_of(request))
    path = svc.storage.hls_dir(job_id) / hls.PLAYLIST
    if not path.is_file():
        if rec.status in TERMINAL and rec.status != JobStatus.SUCCEEDED:
            err = ResultNotReadyError(f"job {job_id} is {rec.status}; it has no live stream")
            err.retryable = False
        else:
            err = ResultNotReadyError(f"job {job_id} is {rec.status}; no segment is playable yet")
        raise err
    # Read whole, not streamed: the playlist is replaced (atomically) as segments finish, and a file
    # response that stat()s one version and sends another would cut the body short.
    body = await asyncio.to_thread(path.read_bytes)
    return PlaylistResponse(body, headers=_PLAYLIST_HEADERS)


@router.get("/{job_id}/hls/{name}", response_class=MediaFileResponse, responses=responses(401, 404),
            summary="A live stream file: init.mp4 or seg_NNNNN.m4s (fMP4)")
async def media(job_id: str, name: str, request: Request, access_token: str | None = _ACCESS_TOKEN,
                svc: ApiServices = Depends(services)):
    await job_or_404(svc, job_id, tenant_of(request))
    path = svc.storage.hls_dir(job_id) / name
    if not hls.is_media_name(name) or not path.is_file():  # the name check keeps reads inside the folder
        raise NotFoundError(f"job {job_id} has no live stream file {name!r}")
    kind = "video/mp4" if name == hls.INIT else "video/iso.segment"
    return MediaFileResponse(path, media_type=kind, headers=_SEGMENT_HEADERS)
