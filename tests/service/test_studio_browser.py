"""The web studio in a real browser (Debian's chromium, headless) against the live service on a real
Ray cluster: the demo job end to end, a bad upload's message, avatars, cancel, phone width."""

from __future__ import annotations

import re
from pathlib import Path

import av
import pytest
from playwright.sync_api import Page, expect
from ray import serve

from tests.media import ASSETS, speech_like, write_audio
from tests.service.browser import (DESKTOP, PHONE, PageLog, browser, low_contrast_texts, screenshot,
                                   unlabelled_controls)
from tests.service.harness import Client, deploy, make_media, slow_generator, small_args

DEMO_AUDIO = ASSETS / "demo_speech.wav"
DEMO_VIDEO = ASSETS / "demo_template.mp4"

# Records every progress value and status line the page shows, from before its scripts run.
RECORD_PROGRESS = """
window.__seen = {values: [], texts: []};
document.addEventListener('DOMContentLoaded', () => {
  const bar = document.getElementById('job-progress');
  const text = document.getElementById('job-progress-text');
  new MutationObserver(() => window.__seen.texts.push(text.textContent))
    .observe(text, {childList: true, characterData: true, subtree: true});
  // What the player did while the job card still said the job was running.
  window.__live = [];
  const player = document.getElementById('player');
  const status = () => document.getElementById('job-status').textContent;
  player.addEventListener('livestart', () => window.__live.push(['livestart', status(), player.currentTime]));
  player.addEventListener('timeupdate', () => window.__live.push(['time', status(), player.currentTime, player.src.slice(0, 5)]));
  const desc = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
  Object.defineProperty(bar, 'value', {
    get() { return desc.get.call(this); },
    set(v) { desc.set.call(this, v); window.__seen.values.push(Number(v)); },
  });
});
"""


@pytest.fixture(scope="module")
def service(cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    faults = tmp_path_factory.mktemp("faults")
    # Each generate call takes 0.15 s longer: the 14 s demo job renders for ~3.5 s instead of
    # ~1.5 s, across several heartbeats, so the page can show its "Rendering frames" stage.
    slow_generator(faults, 0.15)
    deploy(small_args(storage, chaos_dir=str(faults)))
    client = Client(f"http://127.0.0.1:{cluster}")
    client.wait_http("/readyz", 200)
    index = client.http.get("/")
    assert index.status_code == 200 and "lipserve studio" in index.text, "the ingress does not serve the studio at /"
    yield client
    serve.delete("lipserve")


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium, service):
    context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    context.add_init_script(RECORD_PROGRESS)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    log = PageLog(pg)
    pg.goto(service.base + "/")
    expect(pg.locator("#health")).to_have_text("Service ready")
    pg.log = log  # for assertion messages
    yield pg
    context.close()


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return float(s.duration * s.time_base)


def test_page_is_labelled_and_keyboard_usable(page: Page):
    assert unlabelled_controls(page) == []
    expect(page.locator("#backend option")).to_contain_text(["default"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    # The template source is a radio group: arrow keys switch it and show the avatar picker.
    page.focus("#src-upload")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#avatar-select")).to_be_visible()
    expect(page.locator("#video")).to_be_hidden()
    # The API key stays in this tab's session storage.
    page.fill("#api-key", "k-123")
    with page.expect_request(lambda r: "/v1/jobs" in r.url) as listing:
        page.press("#api-key", "Enter")
    assert listing.value.headers.get("authorization") == "Bearer k-123"
    assert page.evaluate("sessionStorage.getItem('lipserve.apiKey')") == "k-123"


def test_bad_audio_shows_the_file_and_the_reason(page: Page, tmp_path):
    notes = tmp_path / "meeting-notes.txt"
    notes.write_text("not audio at all\n" * 50)
    page.set_input_files("#audio", str(notes))
    page.set_input_files("#video", str(DEMO_VIDEO))
    page.click("#submit")
    alert = page.locator("#form-error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("meeting-notes.txt")
    assert low_contrast_texts(page) == []  # the error message too
    text = alert.inner_text()
    assert re.search(r"audio|decod|stream|not a media file", text, re.I), text  # the reason, not just the name
    assert "/tmp" not in text and "inputs" not in text, f"a server path leaked: {text}"
    # Client-side check: a job needs audio at all.
    page.reload()
    page.click("#submit")
    expect(page.locator("#form-error")).to_have_text("Choose a speech audio file.")
    assert page.evaluate("document.activeElement.id") == "audio"


def test_demo_job_live_progress_playback_and_download(page: Page, tmp_path):
    # With a key set, every API call carries it, the SSE stream and the result download included.
    page.fill("#api-key", "studio-key")
    page.press("#api-key", "Enter")
    api_calls = []
    page.on("request", lambda r: "/v1/" in r.url and api_calls.append((r.url, r.headers.get("authorization"))))
    page.set_input_files("#audio", str(DEMO_AUDIO))
    page.set_input_files("#video", str(DEMO_VIDEO))
    page.click("#submit")
    expect(page.locator("#job-card")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=150_000)
    expect(page.locator("#job-progress-text")).to_contain_text("100 %")
    assert page.evaluate("document.getElementById('job-progress').value") == 100
    seen = page.evaluate("window.__seen")
    assert any(0 < v < 100 for v in seen["values"]), f"no intermediate progress shown: {seen}\n{page.log}"
    assert seen["values"] == sorted(seen["values"]), seen["values"]
    assert any("Rendering frames" in t for t in seen["texts"]), seen["texts"]

    # The result plays in the page, as long as the audio to within one frame.
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.src.startsWith('blob:') && v.readyState >= 1 && isFinite(v.duration); }")
    duration = page.evaluate("document.getElementById('player').duration")
    with av.open(str(DEMO_VIDEO)) as c:
        frame = 1 / float(c.streams.video[0].average_rate)
    assert abs(duration - audio_seconds(DEMO_AUDIO)) <= frame + 1e-3, (duration, audio_seconds(DEMO_AUDIO))
    page.evaluate("document.getElementById('player').currentTime = 1.0")
    page.wait_for_function("document.getElementById('player').readyState >= 2")  # a frame decoded

    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.suffix == ".mp4" and saved.read_bytes()[4:8] == b"ftyp"

    assert {u.split("/v1/")[1].split("/")[-1] for u, _ in api_calls} >= {"jobs", "events", "result"}, api_calls
    assert all(h == "Bearer studio-key" for _, h in api_calls), api_calls

    row = page.locator("#jobs-body tr").first
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(row).to_contain_text("demo_speech.wav + demo_template.mp4")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "studio-desktop", tmp_path, full_page=False)
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "sideways scroll at phone width"
    page.locator("#job-card").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('job-card').scrollIntoView({block: 'start'})")
    screenshot(page, "studio-phone", tmp_path, full_page=False)
    # Every state shown so far (form, job card, result, list) reads at WCAG AA contrast.
    assert low_contrast_texts(page) == []


def test_register_avatar_then_cancel_its_job_from_the_list(page: Page, service, tmp_path):
    page.set_input_files("#avatar-video", str(DEMO_VIDEO))
    page.click("#avatar-submit")
    expect(page.locator("#avatar-result")).to_contain_text("Registered demo_template.mp4 as avatar")
    avatar_id = re.search(r"avatar (\w+)", page.locator("#avatar-result").inner_text()).group(1)
    page.check("#src-avatar")
    expect(page.locator("#avatar-select")).to_have_value(avatar_id)

    long_audio, _ = make_media(tmp_path, 20.0, seed=3)  # long enough to still be running when cancelled
    page.set_input_files("#audio", str(long_audio))
    page.click("#submit")
    expect(page.locator("#job-status")).to_have_text(re.compile("queued|running"))
    job_id = page.get_attribute("#job-id", "title")
    page.click("#jobs-refresh")
    cancel = page.locator(f'#jobs-body tr[data-job-id="{job_id}"] button.danger')
    cancel.focus()
    page.keyboard.press("Enter")  # keyboard, not a mouse click
    row = page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row).to_contain_text("cancelled by request")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert service.job(job_id)["status"] == "cancelled"
    assert service.job(job_id)["meta"]["avatar_id"] == avatar_id


def test_live_hls_plays_before_the_job_ends_then_switches_to_the_mp4(page: Page, service, tmp_path):
    # A job of many segments that lasts long enough to be watched live (the writer reads the
    # avatar's cached frames: a 14 s job on the demo template could finish before the first poll).
    seconds = 40.0
    audio = write_audio(tmp_path / "long-speech.wav", speech_like(seconds, seed=5))
    page.set_input_files("#audio", str(audio))
    page.set_input_files("#video", str(DEMO_VIDEO))
    page.click("#submit")
    expect(page.locator("#job-id")).to_have_attribute("title", re.compile(r"^[0-9a-f]{32}$"))
    job_id = page.get_attribute("#job-id", "title")
    route = service.http.get(f"/v1/jobs/{job_id}/hls/index.m3u8")
    route_missing = route.status_code == 404 and route.json().get("detail") == "Not Found"
    assert not route_missing, "the ingress has no HLS route"  # fail at once, not after the wait below
    page.wait_for_function("window.__live.some((e) => e[0] === 'livestart')", timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=150_000)
    live = page.evaluate("window.__live")
    playing_early = [e for e in live if e[0] == "time" and e[1] == "running" and e[2] > 0.2]
    assert playing_early, f"the live stream never played while the job ran: {live[:20]}\n{page.log}"
    page.wait_for_function("document.getElementById('player').src.startsWith('blob:')"
                           " && isFinite(document.getElementById('player').duration)")
    duration = page.evaluate("document.getElementById('player').duration")
    # The player's duration is the longer track's: the video, or the AAC track, which ends on a whole
    # 1024-sample frame (64 ms at the speech's 16 kHz) and may count its priming frame too.
    assert abs(duration - seconds) <= 2 * 1024 / 16000 + 1e-3, duration
