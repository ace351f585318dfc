"""The web studio: plain static files (``static/``) served by the ingress at ``/`` and ``/static/``.

No build step: the page is hand-written HTML, CSS and JavaScript that talks to the public job API
with relative URLs, so it works behind any route prefix that ends in ``/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = STATIC_DIR / "index.html"

# The page and its scripts change with the deployment: revalidate rather than cache stale code.
_NO_STALE = {"Cache-Control": "no-cache"}


class _RevalidatedStaticFiles(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def mount_studio(app: FastAPI) -> None:
    """Serve the studio page at ``/`` and its assets at ``/static/...`` on ``app``."""
    if not INDEX.is_file():  # a broken install should fail at start-up, not as a 404 later
        raise FileNotFoundError(f"the studio's static files are missing ({INDEX.name} not packaged)")

    @app.get("/", include_in_schema=False)
    async def studio_index() -> FileResponse:
        return FileResponse(INDEX, media_type="text/html", headers=_NO_STALE)

    app.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="studio-static")
