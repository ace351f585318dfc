"""Multipart parsing that takes only the expected files and fields.

Starlette's parser accepts any number of parts by default; each file part is spooled to disk, so a
request with thousands of tiny parts is cheap to send and expensive to take. ``read_form`` caps the
counts at what the route expects, refuses unknown or repeated names and wrong kinds (a text value
where a file belongs), all as ``InvalidParameterError`` naming the field.
"""

from __future__ import annotations

from typing import Collection

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from actors.errors import InvalidParameterError


async def read_form(request: Request, *, files: Collection[str], fields: Collection[str],
                    max_field_bytes: int = 64 * 1024) -> FormData:
    """Parse a ``multipart/form-data`` (or urlencoded) body. ``files``: names that may carry a
    file; ``fields``: names that may carry text. Each name at most once. Any other name, a repeated
    name or too many parts is an ``InvalidParameterError``. Body-size errors raised by
    ``BodyLimitMiddleware`` pass through unchanged."""
    files, fields = set(files), set(fields)
    try:
        form = await request.form(max_files=len(files), max_fields=len(fields), max_part_size=max_field_bytes)
    except MultiPartException as exc:
        raise InvalidParameterError(f"multipart body refused: {exc.message}", path="request body") from exc
    except HTTPException as exc:  # what starlette raises for parser errors inside an app
        raise InvalidParameterError(f"multipart body refused: {exc.detail}", path="request body") from exc
    expected = ", ".join(sorted(files | fields)) or "none"
    seen: set[str] = set()
    try:
        for name, value in form.multi_items():
            if name in seen:
                raise InvalidParameterError(f"multipart field '{name}' is given more than once", path=name)
            seen.add(name)
            if isinstance(value, UploadFile):
                if name not in files:
                    raise InvalidParameterError(
                        f"multipart part '{name}' is a file, but only {_names(files)} may be files (expected: {expected})",
                        path=name)
            elif name not in fields:
                if name in files:
                    raise InvalidParameterError(f"multipart field '{name}' must be a file upload", path=name)
                raise InvalidParameterError(f"unexpected multipart field '{name}' (expected: {expected})", path=name)
    except InvalidParameterError:
        await form.close()  # remove the spooled files at once
        raise
    return form


def _names(names: Collection[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names)) or "no parts"
