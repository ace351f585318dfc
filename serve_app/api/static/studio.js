/* lipserve studio: submit a job, follow it live, play and download the result, manage avatars.
 * Plain browser JavaScript, no build step. Requests go through LipserveApi (api_client.js, which
 * adds the API key); the live preview is LipserveHls (hls_player.js). URLs are relative so the
 * page works under a route prefix that ends in "/".
 */
(function () {
  "use strict";

  const { api, apiKey, setApiKey, errorText, readEvents } = window.LipserveApi;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ formatting
  function seconds(s) {
    if (s == null || !isFinite(s)) return "–";
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${Math.round(s - 60 * m)} s`;
  }

  const STAGE_NAMES = {
    queued: "Waiting in the queue", audio: "Reading the audio", avatar: "Preparing the template",
    generate_write: "Rendering frames", finalize: "Joining the video", submit: "Submitting",
  };

  function stageName(job) {
    if (job.status === "queued") return STAGE_NAMES.queued;
    return STAGE_NAMES[job.stage] || job.stage || job.status;
  }

  function jobDuration(job) {
    const end = job.finished_at || (TERMINAL.has(job.status) ? job.updated_at : Date.now() / 1000);
    return job.created_at ? end - job.created_at : null;
  }

  function inputNames(job) {
    const params = job.params || {};
    const inputs = params.display || params.inputs || {}; // the client's file names
    return [inputs.audio, inputs.video].filter(Boolean).join(" + ");
  }

  function errorMessage(job) {
    return job.error ? `${job.error.message} (${job.error.code})` : "";
  }

  function showError(el, text) {
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ------------------------------------------------------------------ service facts
  async function loadHealth() {
    const el = $("health");
    try {
      const resp = await api("readyz");
      el.textContent = resp.ok ? "Service ready" : `Service not ready: ${(await resp.json()).reason || resp.status}`;
      el.dataset.state = resp.ok ? "ok" : "warn";
    } catch (exc) {
      el.textContent = `Service unreachable: ${exc.message}`;
      el.dataset.state = "bad";
    }
  }

  async function loadBackends() {
    const select = $("backend");
    let names = ["default"];
    try {
      const resp = await api("v1/backends");
      if (resp.ok) names = (await resp.json()).backends || names;
    } catch (_) { /* older deployments: only the default backend */ }
    select.replaceChildren(...names.map((n) => new Option(n, n)));
  }

  async function loadAvatars(selectId) {
    const select = $("avatar-select");
    let avatars = [];
    try {
      const resp = await api("v1/avatars");
      if (resp.ok) avatars = (await resp.json()).avatars || [];
    } catch (_) { /* listing not served: registered ids still appear after registering */ }
    const known = new Set(avatars.map((a) => a.avatar_id));
    for (const opt of select.options) {
      if (opt.value && !known.has(opt.value)) avatars.push({ avatar_id: opt.value, label: opt.textContent });
    }
    const label = (a) => a.label || (a.name ? `${a.name} (${a.avatar_id.slice(0, 8)})` : a.avatar_id) +
      (a.width ? ` ${a.width}×${a.height}` : "");
    select.replaceChildren(...avatars.map((a) => new Option(label(a), a.avatar_id)));
    if (selectId) select.value = selectId;
    if (!avatars.length) select.replaceChildren(new Option("No avatars registered yet", ""));
  }

  // ------------------------------------------------------------------ current job
  let follow = null; // {id, abort, started, firstProgress}

  function renderJob(job, tracker) {
    $("job-card").hidden = false;
    $("main").classList.add("has-job");
    $("job-id").textContent = `Job ${job.id.slice(0, 12)}`;
    $("job-id").title = job.id;
    const badge = $("job-status");
    badge.textContent = job.status;
    badge.dataset.status = job.status;
    const pct = Math.round(100 * (job.status === "succeeded" ? 1 : job.progress || 0));
    $("job-progress").value = pct;
    let text = `${stageName(job)} · ${pct} %`;
    if (!TERMINAL.has(job.status)) {
      const eta = estimateEta(job, tracker);
      if (eta != null) text += ` · about ${seconds(eta)} left`;
    } else if (job.status === "succeeded") {
      text = `Done · 100 % · took ${seconds(jobDuration(job))}`;
    }
    $("job-progress-text").textContent = text;
    showError($("job-error"), job.status === "failed" ? errorMessage(job) : "");
    $("job-cancel").hidden = TERMINAL.has(job.status);
  }

  /** ETA from the rate since the first running observation (client clock only: no skew). */
  function estimateEta(job, tracker) {
    const now = performance.now() / 1000;
    const p = job.progress || 0;
    if (job.status !== "running") return null;
    if (!tracker.first) { tracker.first = { t: now, p }; return null; }
    const dp = p - tracker.first.p;
    const dt = now - tracker.first.t;
    if (dp < 0.02 || dt < 0.5) return null;
    return (dt * (1 - p)) / dp;
  }

  function startPlaybackWhenReady(video) {
    video.play().catch(() => { video.muted = true; return video.play(); }).catch(() => {});
  }

  /** The live HLS preview while the job runs. tracker.live: null (try again later), "starting",
   * "playing", "failed" or "unsupported" (this deployment has no HLS route). */
  async function tryLivePreview(job, tracker) {
    if (tracker.live || !window.LipserveHls || TERMINAL.has(job.status)) return;
    const now = performance.now();
    if (tracker.liveTried && now - tracker.liveTried < 1000) return;
    tracker.liveTried = now;
    const video = $("player");
    const path = `v1/jobs/${job.id}/hls/index.m3u8`;
    const key = apiKey();
    tracker.live = "starting";
    video.addEventListener("livestart", () => { tracker.live = "playing"; }, { once: true, signal: tracker.abort.signal });
    try {
      const mode = await window.LipserveHls.playLive(video, path, {
        fetchFn: (url, init) => api(url, init),
        signal: tracker.abort.signal,
        nativeUrl: key ? `${path}?access_token=${encodeURIComponent(key)}` : path,
        onStatus: (s) => { if (!tracker.done) $("player-caption").textContent = s; },
      });
      if (mode === "native") { tracker.live = "playing"; startPlaybackWhenReady(video); }
    } catch (exc) {
      if (tracker.abort.signal.aborted) return; // the result replaced the preview
      if (exc.status === 404 && /"detail"\s*:\s*"Not Found"/.test(exc.body || "")) {
        tracker.live = "unsupported"; // the route itself is missing: the MP4 comes at the end
      } else if (exc.status === 404 || exc.status === 409) {
        tracker.live = null; // no segment yet: try again on a later progress event
      } else {
        tracker.live = "failed";
        if (!tracker.done) $("player-caption").textContent = `Live preview unavailable: ${exc.message}`;
      }
    }
  }

  async function showResult(job, tracker) {
    const video = $("player");
    const resp = await api(`v1/jobs/${job.id}/result`);
    if (!resp.ok) { showError($("job-error"), await errorText(resp)); return; }
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const wasLive = tracker.live === "playing";
    const position = wasLive ? video.currentTime : 0;
    const wasPlaying = wasLive && !video.paused;
    tracker.abort.abort(); // stop the live reader before swapping sources
    video.src = url;
    video.addEventListener("loadedmetadata", () => {
      if (position && position < video.duration) video.currentTime = position;
      if (wasPlaying) startPlaybackWhenReady(video);
    }, { once: true });
    $("player-caption").textContent = `Result: ${inputNames(job) || job.id}`;
    const link = $("download");
    link.href = url;
    link.download = `${job.id}.mp4`;
    link.hidden = false;
  }

  async function followJob(job) {
    if (follow) follow.abort.abort();
    const tracker = { id: job.id, abort: new AbortController(), first: null, live: null, done: false };
    follow = tracker;
    const video = $("player");
    video.removeAttribute("src");
    video.load();
    $("download").hidden = true;
    $("player-caption").textContent = "The video appears here while it renders and when it is done.";
    video.addEventListener("livestart", () => startPlaybackWhenReady(video), { once: true, signal: tracker.abort.signal });
    renderJob(job, tracker);
    const events = new AbortController();
    tracker.abort.signal.addEventListener("abort", () => events.abort(), { once: true });
    let final = TERMINAL.has(job.status) ? job : null;
    try {
      if (!final) {
        await readEvents(`v1/jobs/${job.id}/events`, (type, data) => {
          if (follow !== tracker) return;
          renderJob(data, tracker);
          if (type === "final") final = data;
          else tryLivePreview(data, tracker);
        }, events.signal);
      }
    } catch (exc) {
      if (follow === tracker && exc.name !== "AbortError") showError($("job-error"), `Lost the progress stream: ${exc.message}`);
    }
    if (follow !== tracker || !final) return;
    tracker.done = true;
    renderJob(final, tracker);
    if (final.status === "succeeded") await showResult(final, tracker);
    else tracker.abort.abort();
    refreshJobs();
  }

  // ------------------------------------------------------------------ forms
  function selectedSource() {
    return document.querySelector('input[name="template-source"]:checked').value;
  }

  function syncSource() {
    const avatar = selectedSource() === "avatar";
    $("upload-template").hidden = avatar;
    $("avatar-template").hidden = !avatar;
  }

  async function submitJob(event) {
    event.preventDefault();
    const errorEl = $("form-error");
    showError(errorEl, "");
    const audio = $("audio").files[0];
    const video = $("video").files[0];
    const avatar = $("avatar-select").value;
    const useAvatar = selectedSource() === "avatar";
    const box = $("box").value.trim();
    const missing = !audio ? ["audio", "Choose a speech audio file."]
      : useAvatar && !avatar ? ["avatar-select", "Choose a registered avatar, or upload a template video."]
      : !useAvatar && !video ? ["video", "Choose a template video, or use a registered avatar."]
      : box && !$("box").checkValidity() ? ["box", "The face box is four whole numbers: x1 y1 x2 y2."] : null;
    if (missing) { showError(errorEl, missing[1]); $(missing[0]).focus(); return; }
    const form = new FormData();
    form.append("audio", audio, audio.name);
    if (useAvatar) form.append("avatar_id", avatar);
    else form.append("video", video, video.name);
    form.append("backend", $("backend").value || "default");
    form.append("pingpong", $("pingpong").checked ? "true" : "false");
    if (box) form.append("box", box);
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Uploading…";
    try {
      const resp = await api("v1/jobs", { method: "POST", body: form });
      if (!resp.ok) { showError(errorEl, await errorText(resp)); return; }
      const job = await resp.json();
      refreshJobs();
      followJob(job);
      $("job-card").scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (exc) {
      showError(errorEl, `Could not reach the service: ${exc.message}`);
    } finally {
      button.disabled = false;
      button.textContent = "Make the video";
    }
  }

  async function registerAvatar(event) {
    event.preventDefault();
    const errorEl = $("avatar-error");
    showError(errorEl, "");
    $("avatar-result").textContent = "";
    const file = $("avatar-video").files[0];
    if (!file) { showError(errorEl, "Choose a template video to register."); $("avatar-video").focus(); return; }
    const form = new FormData();
    form.append("video", file, file.name);
    const button = $("avatar-submit");
    button.disabled = true;
    try {
      const resp = await api("v1/avatars", { method: "POST", body: form });
      if (!resp.ok) { showError(errorEl, await errorText(resp)); return; }
      const a = await resp.json();
      $("avatar-result").textContent = `Registered ${file.name} as avatar ${a.avatar_id} (${a.width}×${a.height}, ${a.frames} frames).`;
      const select = $("avatar-select");
      if (![...select.options].some((o) => o.value === a.avatar_id)) {
        select.append(new Option(`${file.name} (${a.avatar_id.slice(0, 8)})`, a.avatar_id));
      }
      await loadAvatars(a.avatar_id);
    } catch (exc) {
      showError(errorEl, `Could not reach the service: ${exc.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ recent jobs
  async function cancelJob(id) {
    const resp = await api(`v1/jobs/${id}`, { method: "DELETE" });
    if (!resp.ok) showError($("form-error"), `Cancel failed: ${await errorText(resp)}`);
    await refreshJobs();
  }

  function jobRow(job) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    tr.dataset.status = job.status;
    const cell = (text, cls) => {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = text;
      tr.append(td);
      return td;
    };
    const name = cell("", "job-name");
    const id = document.createElement("span");
    id.className = "mono";
    id.textContent = job.id.slice(0, 8);
    id.title = job.id;
    name.append(id, document.createElement("br"), inputNames(job));
    const status = cell("");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = job.status;
    badge.textContent = TERMINAL.has(job.status) ? job.status : `${job.status} ${Math.round(100 * job.progress)} %`;
    status.append(badge);
    cell(seconds(jobDuration(job)));
    cell(errorMessage(job), job.error ? "job-error" : "");
    const actions = cell("", "row-actions");
    const label = inputNames(job) || job.id.slice(0, 8);
    const view = document.createElement("button");
    view.type = "button";
    view.className = "secondary small";
    view.textContent = "Open";
    view.setAttribute("aria-label", `Open job ${label}`);
    view.addEventListener("click", () => followJob(job));
    actions.append(view);
    if (!TERMINAL.has(job.status)) {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "danger small";
      cancel.textContent = "Cancel";
      cancel.setAttribute("aria-label", `Cancel job ${label}`);
      cancel.addEventListener("click", () => cancelJob(job.id));
      actions.append(cancel);
    }
    return tr;
  }

  let refreshing = null;
  async function refreshJobs() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const resp = await api("v1/jobs?limit=20");
        if (!resp.ok) { $("jobs-empty").textContent = await errorText(resp); $("jobs-empty").hidden = false; return; }
        const jobs = (await resp.json()).jobs || [];
        // Re-rendering must not steal keyboard focus from a button in the list.
        const focused = document.activeElement && document.activeElement.closest("#jobs-body tr");
        const refocus = focused && [focused.dataset.jobId, document.activeElement.textContent];
        $("jobs-body").replaceChildren(...jobs.map(jobRow));
        if (refocus) {
          const row = $("jobs-body").querySelector(`tr[data-job-id="${refocus[0]}"]`);
          const button = row && ([...row.querySelectorAll("button")].find((b) => b.textContent === refocus[1])
                                 || row.querySelector("button"));
          if (button) button.focus();
        }
        $("jobs-table").hidden = !jobs.length;
        $("jobs-empty").textContent = "No jobs yet.";
        $("jobs-empty").hidden = Boolean(jobs.length);
      } catch (exc) {
        $("jobs-empty").textContent = `Could not list jobs: ${exc.message}`;
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  // ------------------------------------------------------------------ start
  function init() {
    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setApiKey($("api-key").value.trim());
      loadAll();
    });
    for (const r of document.querySelectorAll('input[name="template-source"]')) r.addEventListener("change", syncSource);
    $("job-form").addEventListener("submit", submitJob);
    $("avatar-form").addEventListener("submit", registerAvatar);
    $("jobs-refresh").addEventListener("click", refreshJobs);
    $("job-cancel").addEventListener("click", () => follow && cancelJob(follow.id));
    syncSource();
    loadAll();
    // The list is cheap to read; keep it current while the tab is visible.
    setInterval(() => { if (!document.hidden) refreshJobs(); }, 5000);
  }

  function loadAll() {
    loadHealth();
    loadBackends();
    loadAvatars();
    refreshJobs();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
