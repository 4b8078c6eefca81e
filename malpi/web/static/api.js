// The console's HTTP requests: JSON in and out, the session's CSRF token on every change.
let csrf = null;
let onLoggedOut = () => {};

export function setCsrf(token) { csrf = token; }
export function whenLoggedOut(fn) { onLoggedOut = fn; }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function check(response) {
  if (response.ok) return response.status === 204 ? null : response.json();
  let body = {};
  try { body = await response.json(); } catch { /* not JSON: use the status text */ }
  if (response.status === 401) onLoggedOut();
  throw new ApiError(response.status, body.error || "http", body.message || response.statusText);
}

function headers(extra = {}) {
  return csrf ? { "X-CSRF-Token": csrf, ...extra } : extra;
}

export const api = {
  async get(path) {
    return check(await fetch(path, { credentials: "same-origin" }));
  },
  async post(path, body = {}) {
    return check(await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    }));
  },
  // A file as the raw body; onProgress(fraction) while it goes up.
  upload(path, file, onProgress = () => {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [k, v] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) {
        xhr.setRequestHeader(k, v);
      }
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onerror = () => reject(new ApiError(0, "network", "the upload failed (connection lost)"));
      xhr.onload = () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch { /* keep {} */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else {
          if (xhr.status === 401) onLoggedOut();
          reject(new ApiError(xhr.status, body.error || "http", body.message || xhr.statusText));
        }
      };
      xhr.send(file);
    });
  },
};

// Element helper: h("button", {class: "x", onclick: f}, "text", child...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  el.append(...children.filter((c) => c != null));
  return el;
}
