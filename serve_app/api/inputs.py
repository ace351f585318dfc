"""Acquiring a job's inputs: an upload, a confined server path, or an http(s) URL.

Every input ends up as a file in the job's own ``inputs`` dir, so the job never reads a path a
client could change later:

* **uploads** are streamed there under the upload limit;
* **server paths** are allowed only under configured roots (``jobs.input_roots``; the Duix API adds
  its data root). The path is resolved (symlinks included) and checked against the resolved roots
  *before* anything looks at whether it exists, so a path outside reveals nothing. The file is
  then hard-linked into the job (a copy across file systems): a later swap of the source changes
  nothing;
* **URLs** are downloaded through ``SafeHttp`` (address checks on every hop, redirects by hand,
  deadline, minimum rate, byte cap) unless ``jobs.allow_private_urls``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import UploadFile

from actors.errors import InvalidParameterError, LipserveError, MediaTooLargeError, UnreadableFileError
from serve_app.api.address_policy import AddressPolicy
from serve_app.api.url_fetch import FetchLimits, SafeHttp
from serve_app.config import JobSettings


@dataclass(frozen=True)
class Input:
    """One acquired input: where it is on the server, and the name the client knows it by."""

    path: Path
    display: str


def is_url(source: str) -> bool:
    return source.strip().lower().startswith(("http://", "https://"))


def _suffix(name: str) -> str:
    return Path(name).suffix.lower()[:8] or ".bin"


class InputAcquirer:
    def __init__(self, jobs: JobSettings, http: SafeHttp | None = None):
        self.jobs = jobs
        self.http = http or SafeHttp(AddressPolicy(allow_private=jobs.allow_private_urls,
                                                   trusted=tuple(jobs.trusted_url_addresses)))

    # -- uploads ---------------------------------------------------------------------------------
    async def save_upload(self, upload: UploadFile, dest_dir: Path, field_name: str) -> Input:
        """Stream an upload to ``dest_dir`` under the upload limit."""
        name = Path(upload.filename or field_name).name or field_name
        dest = dest_dir / f"{field_name}{_suffix(name)}"
        limit = self.jobs.max_upload_bytes
        size = 0
        with open(dest, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise MediaTooLargeError(f"upload '{field_name}' ({name}) is larger than {limit} bytes", path=name)
                f.write(chunk)
        if size == 0:
            raise UnreadableFileError(f"upload '{field_name}' ({name}) is empty", path=name)
        return Input(dest, name)

    # -- URLs ------------------------------------------------------------------------------------
    def fetch_limits(self) -> FetchLimits:
        j = self.jobs
        return FetchLimits(max_bytes=j.max_upload_bytes, deadline_s=j.url_deadline_s,
                           connect_timeout_s=j.url_connect_timeout_s, min_rate_bytes_s=j.url_min_rate_bytes_s,
                           rate_grace_s=j.url_rate_grace_s, max_redirects=j.url_max_redirects)

    async def fetch_url(self, url: str, dest_dir: Path, field_name: str) -> Input:
        dest = dest_dir / f"{field_name}{_suffix(url.split('?')[0].split('#')[0])}"
        try:
            await self.http.download(url, dest, self.fetch_limits())
        except LipserveError as err:  # name the field and the client's URL in the message
            out = type(err)(f"{field_name} {url}: {err.message}", path=url)
            raise out from err
        return Input(dest, url)

    # -- server paths ----------------------------------------------------------------------------
    @staticmethod
    def confine(source: str, roots: list[str] | None, what: str = "jobs.input_roots") -> Path:
        """``source`` resolved (symlinks too), if it lies under one of the resolved ``roots``.
        Raised before any existence check, with the same message whether or not the file exists."""
        if not roots:
            raise InvalidParameterError(
                f"server paths are not accepted by this deployment ({what} is not set): upload the file "
                "or pass an http(s) URL", path=source)
        resolved = Path(os.path.realpath(os.path.expanduser(source)))
        for root in roots:
            r = Path(os.path.realpath(os.path.expanduser(root)))
            if resolved.is_relative_to(r):
                return resolved
        raise InvalidParameterError(f"server paths must lie under {', '.join(roots)} ({what})", path=source)

    @staticmethod
    def link_into(resolved: Path, source: str, dest_dir: Path, field_name: str) -> Input:
        """Hard-link (else copy) a confined server file into the job: the job reads its own file."""
        if not resolved.is_file():
            raise UnreadableFileError("no such file on the server", path=source)
        dest = dest_dir / f"{field_name}{_suffix(resolved.name)}"
        try:
            os.link(resolved, dest)
        except OSError:
            shutil.copyfile(resolved, dest)
        return Input(dest, source)

    def server_path(self, source: str, dest_dir: Path, field_name: str, roots: list[str] | None,
                    what: str = "jobs.input_roots") -> Input:
        return self.link_into(self.confine(source, roots, what), source, dest_dir, field_name)

    async def acquire(self, source: str, dest_dir: Path, field_name: str, roots: list[str] | None,
                      what: str = "jobs.input_roots") -> Input:
        """A JSON submission's input: an http(s) URL or a server path."""
        if is_url(source):
            return await self.fetch_url(source, dest_dir, field_name)
        return await asyncio.to_thread(self.server_path, source, dest_dir, field_name, roots, what)
