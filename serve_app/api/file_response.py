"""Files sent to clients (results, live HLS segments) in 1 MiB chunks.

Behind Serve, every chunk of a streamed response is one hop from the ingress replica to the HTTP
proxy; Starlette's 64 KiB default made a 1.5 MB result 24 hops (~25 ms on the CPU config). 1 MiB
chunks keep a download to a couple of hops while bounding what one download holds in memory.
"""

from __future__ import annotations

from fastapi.responses import FileResponse


class MediaFileResponse(FileResponse):
    chunk_size = 1 << 20
