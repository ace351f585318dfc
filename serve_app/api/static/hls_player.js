/* A small live HLS player for lipserve's growing EVENT playlists, without a library.
 *
 * Two paths, picked by feature detection:
 *  - Media Source Extensions (Chromium, Firefox, Safari 17+ via ManagedMediaSource) for playlists of
 *    fragmented-MP4 segments (#EXT-X-MAP init + .m4s): the segments are fetched here, so they carry
 *    the Authorization header like every other API call;
 *  - the browser's own HLS (Safari, iOS, recent Chromium) otherwise: the <video> fetches the playlist
 *    itself, so a key can only travel as ?access_token= on the playlist URL.
 * The playlist is re-read every half target duration until #EXT-X-ENDLIST.
 */
(function (global) {
  "use strict";

  const HLS_MIME = "application/vnd.apple.mpegurl";

  function mediaSourceClass() {
    return global.ManagedMediaSource || global.MediaSource || null;
  }

  function nativeHls(video) {
    return Boolean(video.canPlayType(HLS_MIME));
  }

  /** Parse a media playlist: segments (absolute URLs), init segment, target duration, end flag. */
  function parsePlaylist(text, baseUrl) {
    const lines = text.split(/\r?\n/).map((l) => l.trim());
    if (lines[0] !== "#EXTM3U") throw new Error("not an HLS playlist (no #EXTM3U)");
    const out = { segments: [], init: null, target: 2, ended: false };
    let pendingDuration = null;
    for (const line of lines.slice(1)) {
      if (!line) continue;
      if (line.startsWith("#EXT-X-TARGETDURATION:")) out.target = Number(line.split(":")[1]) || 2;
      else if (line.startsWith("#EXT-X-MAP:")) {
        const m = /URI="([^"]+)"/.exec(line);
        if (m) out.init = new URL(m[1], baseUrl).href;
      } else if (line.startsWith("#EXTINF:")) pendingDuration = parseFloat(line.slice(8));
      else if (line === "#EXT-X-ENDLIST") out.ended = true;
      else if (!line.startsWith("#")) {
        out.segments.push({ url: new URL(line, baseUrl).href, duration: pendingDuration });
        pendingDuration = null;
      }
    }
    return out;
  }

  /** RFC 6381 codec string from an fMP4 init segment (H.264 video + AAC audio, as lipserve writes). */
  function codecsFromInit(bytes) {
    const find = (fourcc) => {
      const c = [...fourcc].map((ch) => ch.charCodeAt(0));
      for (let i = 0; i + 4 <= bytes.length; i++) {
        if (bytes[i] === c[0] && bytes[i + 1] === c[1] && bytes[i + 2] === c[2] && bytes[i + 3] === c[3]) return i;
      }
      return -1;
    };
    const codecs = [];
    const avcC = find("avcC");
    if (avcC >= 0) {
      // avcC: configurationVersion, AVCProfileIndication, profile_compatibility, AVCLevelIndication
      const hex = (b) => b.toString(16).padStart(2, "0");
      codecs.push("avc1." + hex(bytes[avcC + 5]) + hex(bytes[avcC + 6]) + hex(bytes[avcC + 7]));
    }
    if (find("mp4a") >= 0) codecs.push("mp4a.40.2");
    if (!codecs.length) throw new Error("the init segment holds neither H.264 nor AAC");
    return codecs.join(", ");
  }

  function once(target, event) {
    return new Promise((resolve) => target.addEventListener(event, resolve, { once: true }));
  }

  function delay(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /**
   * Play ``url`` in ``video`` while it grows. ``fetchFn(url, {signal})`` is the caller's
   * authorised fetch. Resolves when the playlist has ended and everything is buffered, or when
   * ``signal`` aborts; ``onStatus(text)`` reports what happens. Returns the path taken.
   */
  async function playLive(video, url, { fetchFn, signal, onStatus = () => {}, nativeUrl = url }) {
    const first = await fetchFn(url, { signal });
    if (!first.ok) {
      const body = await first.text().catch(() => "");
      throw Object.assign(new Error(`playlist answered HTTP ${first.status}`), { status: first.status, body });
    }
    let playlist = parsePlaylist(await first.text(), first.url || url);
    const MS = mediaSourceClass();
    if (!(MS && playlist.init)) {
      if (!nativeHls(video)) throw new Error("this browser cannot play this live stream");
      video.src = nativeUrl;
      onStatus("Live preview (browser HLS)");
      return "native";
    }
    const source = new MS();
    if (global.ManagedMediaSource && MS === global.ManagedMediaSource) video.disableRemotePlayback = true;
    video.src = URL.createObjectURL(source);
    await once(source, "sourceopen");
    const initResp = await fetchFn(playlist.init, { signal });
    if (!initResp.ok) throw new Error(`init segment answered HTTP ${initResp.status}`);
    const init = new Uint8Array(await initResp.arrayBuffer());
    const mime = `video/mp4; codecs="${codecsFromInit(init)}"`;
    if (!MS.isTypeSupported(mime)) throw new Error(`this browser cannot decode ${mime}`);
    const buffer = source.addSourceBuffer(mime);
    const append = async (data) => { buffer.appendBuffer(data); await once(buffer, "updateend"); };
    await append(init);
    let next = 0;
    onStatus("Live preview: waiting for the first segment");
    while (!signal.aborted) {
      for (; next < playlist.segments.length && !signal.aborted; next++) {
        const resp = await fetchFn(playlist.segments[next].url, { signal });
        if (!resp.ok) throw new Error(`segment ${next} answered HTTP ${resp.status}`);
        await append(new Uint8Array(await resp.arrayBuffer()));
        if (next === 0) {
          // The stream's first frame may sit a little after 0 (lipserve starts the video after the
          // AAC priming): start where both tracks are buffered, not in the gap before it.
          if (video.buffered.length && video.currentTime < video.buffered.start(0)) {
            video.currentTime = video.buffered.start(0);
          }
          onStatus("Live preview: playing while the job renders");
          video.dispatchEvent(new CustomEvent("livestart"));
        }
      }
      if (playlist.ended) {
        if (source.readyState === "open") source.endOfStream();
        onStatus("Live preview: complete");
        return "mse";
      }
      await delay(Math.max(250, playlist.target * 500), signal);
      if (signal.aborted) break;
      const resp = await fetchFn(url, { signal });
      if (!resp.ok) throw new Error(`playlist answered HTTP ${resp.status}`);
      playlist = parsePlaylist(await resp.text(), resp.url || url);
    }
    return "mse";
  }

  global.LipserveHls = { playLive, parsePlaylist, codecsFromInit, nativeHls, mediaSourceClass };
})(window);
