/* The studio's HTTP client: every request carries the API key from session storage as a Bearer
 * token, and Server-Sent Events are read with fetch() because EventSource cannot send headers.
 */
(function (global) {
  "use strict";

  const KEY_STORAGE = "lipserve.apiKey";

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function authorised(init = {}) {
    const headers = new Headers(init.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return { ...init, headers };
  }

  function api(path, init) {
    return fetch(path, authorised(init));
  }

  /** The message a user should read for a failed response: the API's typed error when there is one. */
  async function errorText(resp) {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    const err = body && (body.error || body.detail);
    if (err && typeof err === "object" && err.message) return `${err.message} (${err.code || resp.status})`;
    if (typeof err === "string") return `${err} (HTTP ${resp.status})`;
    if (resp.status === 401 || resp.status === 403) return `The API key was refused (HTTP ${resp.status}).`;
    return `The service answered HTTP ${resp.status} ${resp.statusText}`.trim();
  }

  /** Read a Server-Sent Events stream with fetch; calls onEvent(type, data) per event. */
  async function readEvents(path, onEvent, signal) {
    const resp = await api(path, { signal, headers: { Accept: "text/event-stream" } });
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += value;
      let end;
      while ((end = buffered.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end).replace(/^\r?\n\r?\n/, "");
        let type = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length) onEvent(type, JSON.parse(data.join("\n")));
      }
    }
  }

  function setApiKey(key) {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  global.LipserveApi = { api, apiKey, setApiKey, errorText, readEvents };
})(window);
