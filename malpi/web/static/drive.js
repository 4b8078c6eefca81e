// Drive and watch: the live video with its overlay, the controls, and the last minute's plots.
//
// Drive commands go out at DRIVE_HZ over the live socket while a control is held (a key, the
// touch joystick, the phone's tilt, a gamepad's stick); one stop goes out when it is let go,
// and when the page is hidden or loses focus. Nothing repeats a command by itself: when this
// page stops sending, the robot's deadman stops the car.
import { h } from "./api.js";
import { Plots } from "./plots.js";

const DRIVE_HZ = 20;
const DEADZONE = 0.2;  // of a stick's or the joystick's travel
const TILT_FULL = 30;  // degrees of tilt for a full turn
const MODES = ["paused", "manual", "auto"];

let ws = null;
let api = null;
let actions = [];  // the robot's action table: {name, steering, throttle}
let status = null;
let live = false;
let leaving = false;
let driving = false;  // a drive went out since the last stop
let lastInput = 0;  // Unix ms of the latest input event (for the control latency figure)
const keys = new Set();
const pad = { active: false, x: 0, y: 0 };
const tilt = { on: false, x: 0, y: 0, zero: null };
const ui = {};
const plots = new Plots();

// Figures the benchmark reads (malpi bench web): video latency per frame, frames drawn.
window.malpiStats = { videoMs: [], frames: 0, drives: 0 };

export function mount(el, theApi) {
  api = theApi;
  ui.canvas = h("canvas", { id: "video", width: 160, height: 120, "aria-label": "camera" });
  ui.overlay = h("div", { class: "overlay" });
  ui.banner = h("div", { class: "banner", role: "alert", hidden: true });
  ui.probs = h("div", { class: "probs", "aria-label": "action probabilities" });
  ui.events = h("div", { class: "events", "aria-live": "polite" });
  ui.modes = MODES.map((m) => h("button", { "data-mode": m,
    onclick: () => command("/api/mode", { mode: m }) }, m));
  ui.record = h("button", { id: "record", onclick: () =>
    command("/api/record", { on: !(status && status.recording) }) }, "Record");
  ui.stick = h("div", { class: "stick", "aria-label": "joystick: touch and drag to drive" },
    h("div", { class: "knob" }));
  ui.tilt = h("button", { id: "tilt", onclick: toggleTilt }, "Tilt: off");
  ui.gamepad = h("span", { class: "hint" }, "");
  ui.plots = h("canvas", { class: "plots", width: 640, height: 200, "aria-label": "last minute" });
  el.append(
    h("div", { class: "video-box" }, ui.canvas, ui.overlay, ui.banner),
    ui.probs,
    h("div", { class: "buttons" }, ...ui.modes,
      h("button", { id: "stop", class: "stop", onclick: () => { release(); command("/api/stop"); } },
        "STOP"),
      h("button", { onclick: () => command("/api/reset") }, "Reset"),
      h("button", { onclick: () => command("/api/end", { outcome: "failed" }) }, "End: failed"),
      ui.record),
    h("div", { class: "drive-row" }, ui.stick,
      h("div", { class: "drive-help" }, ui.tilt, ui.gamepad,
        h("p", { class: "hint" }, "Keys: arrows or WASD drive, space stops, m mode, r reset, " +
          "f end as failed, c record."))),
    ui.plots, ui.events);
  bindKeys();
  bindStick();
  document.addEventListener("visibilitychange", () => { if (document.hidden) release(); });
  window.addEventListener("blur", release);
  window.addEventListener("pagehide", release);
  connect();
  setInterval(tick, 1000 / DRIVE_HZ);
  requestAnimationFrame(drawPlots);
}

export function leave() {
  leaving = true;
  release();
  if (ws) ws.close();
}

// Let go of every control: one stop if this page was driving.
export function release() {
  keys.clear();
  pad.active = false;
  ui.stick?.querySelector(".knob")?.style.removeProperty("transform");
  if (driving) send({ type: "drive", action: null });
  driving = false;
}

async function command(path, body) {
  try { await api.post(path, body); } catch (err) { note(`${path.slice(5)}: ${err.message}`); }
}

// -- the live socket -------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => (typeof e.data === "string" ? onMessages(JSON.parse(e.data)) : onFrame(e.data));
  ws.onclose = () => {
    setLive(false);
    driving = false;
    if (!leaving) setTimeout(connect, 1000);
  };
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function onMessages(list) {
  for (const m of list) {
    if (m.topic === "step") onStep(m);
    else if (m.topic === "status") onStatus(m);
    else if (m.topic === "event") note(m.message);
    else if (m.topic === "link") setLive(m.live);
    else if (m.topic === "drive" && !m.accepted) note(`drive refused: ${m.reason}`);
  }
}

async function onFrame(buffer) {
  const view = new DataView(buffer);
  const n = view.getUint32(0);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  const blob = new Blob([new Uint8Array(buffer, 4 + n)], { type: "image/jpeg" });
  let image;
  try { image = await createImageBitmap(blob); } catch { return; }
  const stats = window.malpiStats;
  stats.videoMs.push(Date.now() - head.t * 1000);
  if (stats.videoMs.length > 2000) stats.videoMs.shift();
  stats.frames += 1;
  // Drawn at the camera's own size; the page scales it up (far less work for the browser
  // than drawing every frame at the window's size).
  const c = ui.canvas;
  if (c.width !== image.width || c.height !== image.height) {
    c.width = image.width;
    c.height = image.height;
  }
  c.getContext("2d").drawImage(image, 0, 0);
  image.close();
}

function setLive(on) {
  live = on;
  const el = document.getElementById("link-state");
  el.textContent = on ? "live" : "link lost";
  el.className = on ? "link-live" : "link-lost";
  ui.canvas.classList.toggle("stale", !on);
}

let lastStep = null;
function onStep(m) {
  lastStep = m;
  const taken = m.action == null ? null : actions[m.action];
  const lat = m.latency_ms || {};
  plots.add(m.t, {
    steering: taken ? taken.steering : 0,
    throttle: taken ? taken.throttle : 0,
    inference: lat.inference ?? null,
    rate: lat.period ? 1000 / lat.period : null,
    value: m.value ?? null,
  });
  scheduleDraw();
}

function onStatus(m) {
  status = { ...status, ...m };
  if (m.actions) actions = m.actions;
  if (!actions.length && api) api.get("/api/status").then(onStatus).catch(() => {});
  for (const b of ui.modes) b.setAttribute("aria-pressed", String(b.dataset.mode === m.mode));
  ui.record.setAttribute("aria-pressed", String(Boolean(m.recording)));
  ui.record.textContent = m.recording ? "Recording" : "Record";
  scheduleDraw();
}

// -- overlay ---------------------------------------------------------------------------

// Steps come 20-50 times a second; people read figures at a few a second. The overlay is
// drawn at most every DRAW_MS, in a displayed frame, by changing the text of elements made
// once: a phone's browser, or four pages sharing a core, has better things to do (the video).
const DRAW_MS = 100;
let drawPending = false;
let drawnAt = 0;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  setTimeout(() => requestAnimationFrame(() => {
    drawPending = false;
    drawnAt = performance.now();
    drawOverlay();
    drawProbs(lastStep || {});
  }), Math.max(0, drawnAt + DRAW_MS - performance.now()));
}

function put(el, text, className) {
  if (el.textContent !== text) el.textContent = text;
  if (className !== undefined && el.className !== className) el.className = className;
}

function drawOverlay() {
  if (!ui.facts) {
    ui.facts = ["badge", "badge rec", "fact", "fact", "fact"].map((c) => h("span", { class: c }));
    ui.overlay.append(...ui.facts);
  }
  const [badge, rec, where, policy, rates] = ui.facts;
  const s = status || {};
  const m = lastStep || {};
  const mode = m.mode || s.mode || "?";
  const lat = m.latency_ms || {};
  const faults = m.faults || Object.keys(s.faults || {});
  put(badge, mode, `badge mode-${mode}`);
  rec.hidden = !s.recording;
  put(rec, "● REC");
  put(where, `episode ${m.episode ?? s.episode ?? "?"} · step ${m.step ?? s.step ?? "?"}`);
  put(policy, `policy ${s.policy_version ?? "none"}` +
    (s.boot_policy_version && s.boot_policy_version !== s.policy_version
      ? ` (boots ${s.boot_policy_version})` : ""));
  put(rates, `${(s.rate_hz ?? 0).toFixed(1)} Hz · missed ${s.missed_periods ?? 0}` +
    (lat.inference != null ? ` · inference ${lat.inference.toFixed(1)} ms` : "") +
    (lat.frame_to_motor != null ? ` · frame→motor ${lat.frame_to_motor.toFixed(1)} ms` : ""));
  ui.banner.hidden = faults.length === 0;
  put(ui.banner, faults.length ? `STOPPED: ${faults.join(", ")}` : "");
}

function drawProbs(m) {
  if (!ui.rows || ui.rows.length !== actions.length) {
    ui.rows = actions.map(() => {
      const row = { bar: h("span", { class: "bar" }), label: h("span", { class: "label" }) };
      row.el = h("div", { class: "prob" }, row.bar, row.label);
      return row;
    });
    ui.probs.replaceChildren(...ui.rows.map((r) => r.el));
  }
  const probs = m.probs || [];
  actions.forEach((a, i) => {
    const row = ui.rows[i];
    const taken = i === m.action;
    row.bar.style.width = `${Math.round((probs[i] ?? 0) * 100)}%`;  // CSSOM: CSP allows no inline styles
    put(row.label, `${a.name}${taken ? ` ← ${m.source}` : ""}`);
    row.el.className = taken ? "prob taken" : "prob";
  });
}

function note(text) {
  const t = new Date();
  const clock = [t.getHours(), t.getMinutes(), t.getSeconds()]
    .map((n) => String(n).padStart(2, "0")).join(":");
  ui.events.prepend(h("div", {}, `${clock} ${text}`));
  while (ui.events.childElementCount > 5) ui.events.lastChild.remove();
}

// -- controls --------------------------------------------------------------------------

// The action nearest to a wish (steer in [-1, 1], negative = left; throttle's sign), as
// malpi/operator/controls.py chooses it for malpi teleop.
export function chooseAction(table, steer, throttle) {
  const reverse = throttle < 0;
  const pool = table.map((a, i) => [i, a]).filter(([, a]) => (reverse ? a.throttle < 0 : a.throttle > 0));
  if (!pool.length) return null;
  const widest = Math.max(...pool.map(([, a]) => Math.abs(a.steering))) || 1;
  const target = Math.max(-1, Math.min(1, steer)) * widest;
  pool.sort(([, a], [, b]) => (Math.abs(a.steering - target) - Math.abs(b.steering - target))
    || (Math.abs(b.throttle) - Math.abs(a.throttle)));
  return pool[0][0];
}

// What the controls ask for now: null = nothing held, {stop: true}, or {steer, throttle}.
function wish() {
  if (keys.has(" ")) return { stop: true };
  const left = keys.has("ArrowLeft") || keys.has("a");
  const right = keys.has("ArrowRight") || keys.has("d");
  const up = keys.has("ArrowUp") || keys.has("w");
  const down = keys.has("ArrowDown") || keys.has("s");
  if (left || right || up || down) {
    return { steer: (right - left) * (up || down ? 0.5 : 1), throttle: up - down || 1 };
  }
  if (pad.active) return stick(pad.x, pad.y);
  if (tilt.on) return stick(tilt.x, tilt.y);
  const gp = [...(navigator.getGamepads ? navigator.getGamepads() : [])].find((g) => g);
  ui.gamepad.textContent = gp ? `Gamepad: ${gp.id.slice(0, 30)}` : "";
  if (gp) {
    if (gp.buttons[0]?.pressed) return { stop: true };
    const w = stick(gp.axes[0] || 0, -(gp.axes[1] || 0));
    if (w) lastInput = Date.now();
    return w;
  }
  return null;
}

function stick(x, y) {
  if (Math.abs(x) <= DEADZONE && Math.abs(y) <= DEADZONE) return null;
  return { steer: Math.abs(x) > DEADZONE ? x : 0, throttle: y < -DEADZONE ? -1 : 1 };
}

function tick() {
  const w = wish();
  if (!live || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (w === null) {
    if (driving) { send({ type: "drive", action: null, t: Date.now() }); driving = false; }
    return;
  }
  const action = w.stop ? null : chooseAction(actions, w.steer, w.throttle);
  send({ type: "drive", action, t: lastInput || Date.now() });
  window.malpiStats.drives += 1;
  driving = action !== null;
}

const KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "w", "a", "s", "d", " "]);
function bindKeys() {
  window.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, textarea, select")) return;
    if (document.getElementById("tab-drive").hidden) return;
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (KEYS.has(k)) {
      e.preventDefault();
      if (!keys.has(k)) { keys.add(k); lastInput = Date.now(); tick(); }
    } else if (!e.repeat) {
      const act = { m: () => command("/api/mode", { mode: MODES[(MODES.indexOf(status?.mode) + 1) % 3] }),
        r: () => command("/api/reset"), f: () => command("/api/end", { outcome: "failed" }),
        c: () => command("/api/record", { on: !(status && status.recording) }) }[k];
      if (act) act();
    }
  });
  window.addEventListener("keyup", (e) => {
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (keys.delete(k)) { lastInput = Date.now(); tick(); }
  });
}

function bindStick() {
  const el = ui.stick;
  const knob = el.querySelector(".knob");
  const move = (e) => {
    const r = el.getBoundingClientRect();
    const x = Math.max(-1, Math.min(1, ((e.clientX - r.left) / r.width) * 2 - 1));
    const y = Math.max(-1, Math.min(1, 1 - ((e.clientY - r.top) / r.height) * 2));
    pad.x = x; pad.y = y; pad.active = true;
    lastInput = Date.now();
    knob.style.transform = `translate(${x * r.width * 0.4}px, ${-y * r.height * 0.4}px)`;
  };
  el.addEventListener("pointerdown", (e) => { el.setPointerCapture(e.pointerId); move(e); tick(); });
  el.addEventListener("pointermove", (e) => { if (pad.active) move(e); });
  for (const end of ["pointerup", "pointercancel", "lostpointercapture"]) {
    el.addEventListener(end, () => {
      if (!pad.active) return;
      pad.active = false; pad.x = pad.y = 0;
      knob.style.removeProperty("transform");
      lastInput = Date.now();
      tick();
    });
  }
}

async function toggleTilt() {
  if (!tilt.on) {
    if (!window.isSecureContext) { note("tilt needs HTTPS (web.tls = true): see docs/web.md"); return; }
    if (typeof DeviceOrientationEvent?.requestPermission === "function") {
      const answer = await DeviceOrientationEvent.requestPermission().catch(() => "denied");
      if (answer !== "granted") { note("tilt: permission refused"); return; }
    }
    tilt.zero = null;
    window.addEventListener("deviceorientation", onTilt);
  } else {
    window.removeEventListener("deviceorientation", onTilt);
    tilt.x = tilt.y = 0;
  }
  tilt.on = !tilt.on;
  ui.tilt.textContent = `Tilt: ${tilt.on ? "on" : "off"}`;
  ui.tilt.setAttribute("aria-pressed", String(tilt.on));
}

function onTilt(e) {
  // A browser without the sensor fires one event of nulls: never a wish (it once read as
  // "tipped forward"). The attitude when tilt was switched on is level: tip from there.
  if (e.beta == null || e.gamma == null) return;
  const landscape = Math.abs(window.orientation ?? screen.orientation?.angle ?? 0) === 90;
  const turn = landscape ? e.beta : e.gamma;
  const push = landscape ? -e.gamma : -e.beta;
  if (tilt.zero === null) tilt.zero = { turn, push };
  tilt.x = Math.max(-1, Math.min(1, (turn - tilt.zero.turn) / TILT_FULL));
  tilt.y = Math.max(-1, Math.min(1, (push - tilt.zero.push) / TILT_FULL));
  lastInput = Date.now();
}

function drawPlots() {
  plots.draw(ui.plots);
  setTimeout(() => requestAnimationFrame(drawPlots), 500);
}
