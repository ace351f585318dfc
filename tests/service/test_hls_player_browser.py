"""The studio's live HLS player (serve_app/api/static/hls_player.js) in Debian's chromium: a growing
EVENT playlist of real fMP4 segments starts playing before it ends, every request carries the API
key, and playback covers the whole stream once #EXT-X-ENDLIST arrives.

The playlist is served by a small local HTTP server that publishes segments when the test says so,
the way the service publishes them as the writer finishes them."""

from __future__ import annotations

import functools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from serve_app.api.studio import STATIC_DIR
from tests.media import ASSETS
from tests.service.browser import DESKTOP, PageLog, browser
from tests.service.hls_media import write_fmp4_hls

KEY = "studio-test-key"
PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>player</title>
<script src="/static/hls_player.js"></script></head>
<body><video id="v" muted playsinline></video></body></html>"""


class GrowingPlaylist:
    """The rendition's playlist cut to the first ``published`` segments; ENDLIST once all are."""

    def __init__(self, playlist: Path):
        lines = playlist.read_text().splitlines()
        first = next(i for i, line in enumerate(lines) if line.startswith("#EXTINF"))
        self.header = lines[:first]
        body = [line for line in lines[first:] if line != "#EXT-X-ENDLIST"]
        self.segments = list(zip(body[0::2], body[1::2]))
        self.published = 0
        self.lock = threading.Lock()

    def publish(self, n: int) -> None:
        with self.lock:
            self.published = min(len(self.segments), n)

    def text(self) -> str:
        with self.lock:
            n = self.published
        lines = self.header + [x for seg in self.segments[:n] for x in seg]
        if n == len(self.segments):
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    def __init__(self, *a, live: GrowingPlaylist, media: Path, auth: list, **kw):
        self.live, self.media, self.auth = live, media, auth
        super().__init__(*a, **kw)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/player":
            return self._send(PAGE, "text/html")
        if path == "/static/hls_player.js":
            return self._send((STATIC_DIR / "hls_player.js").read_bytes(), "text/javascript")
        if path.startswith("/live/"):
            self.auth.append((path, self.headers.get("Authorization")))
            name = path.removeprefix("/live/")
            if name == "index.m3u8":
                return self._send(self.live.text().encode(), "application/vnd.apple.mpegurl")
            file = self.media / name
            if "/" not in name and file.is_file():
                return self._send(file.read_bytes(), "video/mp4" if name.endswith(".mp4") else "video/iso.segment")
        self._send(b"not found", "text/plain", 404)


@pytest.fixture(scope="module")
def rendition(tmp_path_factory) -> Path:
    return write_fmp4_hls(ASSETS / "demo_template.mp4", ASSETS / "demo_speech.wav",
                          tmp_path_factory.mktemp("hls"))


@pytest.fixture
def server(rendition):
    live, auth = GrowingPlaylist(rendition), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(Handler, live=live, media=rendition.parent, auth=auth))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", live, auth
    httpd.shutdown()
    httpd.server_close()


def test_rendition_is_standard_hls_with_audio_in_every_segment(rendition):
    text = rendition.read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and '#EXT-X-MAP:URI="init.mp4"' in text
    segments = sorted(rendition.parent.glob("seg*.m4s"))
    assert len(segments) >= 5
    init = (rendition.parent / "init.mp4").read_bytes()
    for seg in segments[:-1]:  # each full segment decodes on its own with both streams
        joined = rendition.parent / f"joined-{seg.stem}.mp4"
        joined.write_bytes(init + seg.read_bytes())
        with av.open(str(joined)) as c:
            kinds = {p.stream.type for p in c.demux() if p.size}
        assert kinds == {"video", "audio"}, (seg.name, kinds)


def test_live_playlist_plays_before_it_ends_and_sends_the_key(server):
    base, live, auth = server
    live.publish(2)
    with browser() as b:
        context = b.new_context(viewport=DESKTOP)
        page = context.new_page()
        log = PageLog(page)
        page.goto(base + "/player")
        page.evaluate(
            """(key) => {
              const video = document.getElementById('v');
              const fetchFn = (url, init = {}) =>
                fetch(url, {...init, headers: {Authorization: 'Bearer ' + key}});
              window.__status = [];
              window.__done = LipserveHls.playLive(video, '/live/index.m3u8', {
                fetchFn, signal: new AbortController().signal,
                onStatus: (s) => window.__status.push(s),
              });
              window.__done.catch((e) => { window.__error = String(e); });
              video.addEventListener('livestart', () => video.play());
            }""",
            KEY,
        )
        # Playing while only 2 of the segments exist: the playlist has not ended yet.
        page.wait_for_function("document.getElementById('v').currentTime > 0.5", timeout=20_000)
        assert live.published == 2 and "#EXT-X-ENDLIST" not in live.text()
        assert page.evaluate("window.__error || null") is None, str(log)
        buffered = page.evaluate("(() => { const b = document.getElementById('v').buffered;"
                                 " return b.length ? b.end(b.length - 1) : 0; })()")
        assert 1.5 <= buffered <= 2.5, buffered  # exactly what was published, no more

        live.publish(len(live.segments))
        assert page.evaluate("window.__done") == "mse", str(log)
        listed = sum(float(inf.split(":")[1].rstrip(",")) for inf, _ in live.segments)
        ranges = page.evaluate("(() => { const b = document.getElementById('v').buffered;"
                               " return [...Array(b.length).keys()].map((i) => [b.start(i), b.end(i)]); })()")
        # One gap-free range over every published segment (its end may pass the listed total by
        # the AAC encoder's padding, which MSE keeps).
        assert len(ranges) == 1 and ranges[0][0] <= 0.05 and ranges[0][1] >= listed - 0.04, (ranges, listed)
        assert "Live preview: playing while the job renders" in page.evaluate("window.__status")
        context.close()
    assert auth and all(header == f"Bearer {KEY}" for _, header in auth), auth
    assert {p for p, _ in auth} >= {"/live/index.m3u8", "/live/init.mp4", "/live/seg000.m4s"}
