// Episodes: the robot's recording, browsed, played back and curated (cut, delete, outcome).
//
// The list shows every episode, newest first, with its first frame. Opening one plays it back on
// a canvas at the rate it was recorded, with each step's action, who chose it and the policy's
// probabilities. A range of steps can be cut out (the steps after a cut in the middle become an
// episode of their own on the robot), the episode deleted or its outcome marked; each change is
// the robot's, in one transaction, and asked for confirmation first.
import { h } from "./api.js";

let api = null;
const ui = {};
const SHOWN = 40;  // episodes listed at a time ("More" shows more)
let episodes = [];
let shown = SHOWN;
let open = null;  // {episode, actions, rate_hz, steps}
let index = 0;  // into open.steps
let timer = null;
const images = new Map();  // step -> HTMLImageElement (a few ahead of playback)

export function mount(el, theApi) {
  api = theApi;
  document.head.append(h("link", { rel: "stylesheet", href: "/static/curate.css" }));
  ui.message = h("p", { class: "cur-message", role: "status", "aria-live": "polite" });
  ui.list = h("div", { class: "cur-list", "aria-label": "episodes" });
  ui.more = h("button", { class: "quiet", hidden: true,
    onclick: () => { shown += SHOWN; renderList(); } }, "More");
  ui.detail = h("section", { class: "cur-detail", hidden: true, "aria-label": "episode" });
  el.append(
    h("div", { class: "cur-top" },
      h("button", { onclick: () => load() }, "Refresh"), ui.message),
    ui.detail, ui.list, ui.more);
  load();
}

function say(text, error = false) {
  ui.message.textContent = text;
  ui.message.classList.toggle("error", error);
}

async function load() {
  try {
    episodes = (await api.get("/api/episodes")).episodes.reverse();
  } catch (err) {
    say(`Episodes: ${err.message}`, true);
    return;
  }
  if (!episodes.length) say("Nothing recorded yet.");
  renderList();
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "";
}

function renderList() {
  const cards = episodes.slice(0, shown).map((e) => {
    // The robot lends no frame of the episode it is recording.
    const thumb = e.steps && e.outcome !== "running"
      ? h("img", { class: "cur-thumb", alt: "", loading: "lazy",
        src: `/api/episodes/${e.id}/frame/0?u=${e.uuid.slice(0, 8)}` })
      : h("span", { class: "cur-thumb cur-empty" }, e.steps ? "recording" : "no steps");
    thumb.addEventListener?.("error", () => thumb.classList.add("cur-empty"));
    return h("button", { class: `cur-card${open && open.episode.id === e.id ? " open" : ""}`,
      "data-episode": String(e.id), onclick: () => openEpisode(e.id) },
    thumb,
    h("span", { class: "cur-facts" },
      h("strong", {}, `#${e.id}`), " ",
      h("span", { class: `cur-outcome out-${e.outcome}` }, e.outcome), " ",
      `${e.steps} steps`, h("br"),
      h("span", { class: "hint" }, `${when(e.started_at)} · ${e.policy_version || "no policy"}`)));
  });
  ui.list.replaceChildren(...cards);
  ui.more.hidden = episodes.length <= shown;
}

async function openEpisode(id, quiet = false) {
  stop();
  if (!quiet) say(`Loading episode ${id}…`);
  try {
    open = await api.get(`/api/episodes/${id}`);
  } catch (err) {
    say(err.message, true);
    return;
  }
  if (!quiet) say("");
  images.clear();
  index = 0;
  renderDetail();
  renderList();
  ui.detail.scrollIntoView?.({ block: "start" });
}

function renderDetail() {
  const e = open.episode;
  const n = open.steps.length;
  ui.detail.hidden = false;
  ui.canvas = h("canvas", { class: "cur-canvas", width: "160", height: "120",
    "aria-label": "the recorded camera frame" });
  ui.slider = h("input", { type: "range", min: "0", max: String(Math.max(0, n - 1)), value: "0",
    class: "cur-slider", "aria-label": "step", oninput: () => { stop(); show(+ui.slider.value); } });
  ui.play = h("button", { class: "cur-play", onclick: toggle, disabled: n === 0 }, "Play");
  ui.stepText = h("span", { class: "cur-step" });
  ui.probs = h("div", { class: "probs", "aria-label": "action probabilities" });
  ui.from = h("input", { type: "number", min: "0", step: "1", class: "cur-num", id: "cur-from",
    "aria-label": "cut from step", oninput: cutText });
  ui.to = h("input", { type: "number", min: "1", step: "1", class: "cur-num", id: "cur-to",
    "aria-label": "cut to step (not included)", oninput: cutText });
  ui.cutInfo = h("span", { class: "hint" });
  ui.outcome = h("select", { "aria-label": "outcome" },
    ...["finished", "failed", "aborted"].map((o) =>
      h("option", { value: o, selected: o === e.outcome }, o)));
  ui.reward = h("input", { type: "number", step: "any", class: "cur-num",
    placeholder: "final reward", "aria-label": "final reward",
    value: e.final_reward == null ? "" : String(e.final_reward) });
  ui.detail.replaceChildren(
    h("div", { class: "cur-head" },
      h("h2", {}, `Episode ${e.id}`),
      h("span", { class: `cur-outcome out-${e.outcome}` }, e.outcome),
      h("span", { class: "hint" }, `${n} steps${e.dropped_steps ? ` (${e.dropped_steps} dropped)` : ""}` +
        ` · ${when(e.started_at)} · ${e.policy_version || "no policy"} · ${e.notes}`),
      h("button", { class: "quiet cur-close", onclick: close }, "Close")),
    h("div", { class: "cur-player" },
      h("div", { class: "cur-screen" }, ui.canvas),
      h("div", { class: "cur-side" },
        h("div", { class: "cur-controls" }, ui.play, ui.stepText),
        ui.slider, ui.probs)),
    h("div", { class: "cur-tools" },
      h("fieldset", { class: "cur-box" }, h("legend", {}, "Cut steps"),
        h("div", { class: "cur-row" },
          h("label", {}, "from ", ui.from),
          h("button", { class: "quiet", onclick: () => { ui.from.value = stepAt(index); cutText(); } },
            "here"),
          h("label", {}, "to ", ui.to),
          h("button", { class: "quiet", onclick: () => { ui.to.value = stepAt(index) + 1; cutText(); } },
            "here")),
        ui.cutInfo,
        h("button", { class: "cur-cut", onclick: cut }, "Cut")),
      h("fieldset", { class: "cur-box" }, h("legend", {}, "Outcome"),
        h("div", { class: "cur-row" }, ui.outcome, ui.reward,
          h("button", { class: "cur-mark", onclick: mark }, "Mark"))),
      h("div", { class: "cur-row" },
        h("a", { class: "button", href: `/api/episodes/${e.id}/download`,
          download: `episode-${e.id}.sqlite` }, "Download"),
        h("button", { class: "cur-delete", onclick: remove }, "Delete"))));
  cutText();
  if (n) show(0);
  else ui.stepText.textContent = "no steps";
}

function stepAt(i) {
  return open.steps[Math.min(i, open.steps.length - 1)]?.step ?? 0;
}

function cutText() {
  const a = Number(ui.from.value), b = Number(ui.to.value);
  if (ui.from.value === "" || ui.to.value === "" || !(a < b)) {
    ui.cutInfo.textContent = "Choose the first step to cut and the step after the last.";
    return;
  }
  const n = open.steps.filter((s) => s.step >= a && s.step < b).length;
  const before = open.steps.some((s) => s.step < a), after = open.steps.some((s) => s.step >= b);
  ui.cutInfo.textContent = `Removes ${n} step${n === 1 ? "" : "s"}` +
    (before && after ? "; the steps after the cut become a new episode." : ".");
}

function frameImage(step) {
  let img = images.get(step);
  if (!img) {
    img = new Image();
    img.src = `/api/episodes/${open.episode.id}/frame/${step}?u=${open.episode.uuid.slice(0, 8)}` +
      `-${open.episode.steps}`;
    images.set(step, img);
    if (images.size > 64) images.delete(images.keys().next().value);
  }
  return img;
}

function draw(img) {
  if (ui.canvas.width !== img.naturalWidth) ui.canvas.width = img.naturalWidth;
  if (ui.canvas.height !== img.naturalHeight) ui.canvas.height = img.naturalHeight;
  ui.canvas.getContext("2d").drawImage(img, 0, 0);
}

function show(i) {
  index = i;
  const s = open.steps[i];
  ui.slider.value = String(i);
  const names = open.actions.map((a) => a.name);
  ui.stepText.textContent = `step ${s.step} · ${names[s.action] ?? s.action} · ${s.source}` +
    ` · reward ${s.reward.toFixed(2)}`;
  ui.probs.replaceChildren(...names.map((name, k) => {
    const p = s.probs ? s.probs[k] : 0;
    const bar = h("div", { class: "bar" });
    bar.style.width = `${Math.round(p * 100)}%`;  // CSSOM: the CSP allows no inline styles
    return h("div", { class: k === s.action ? "prob taken" : "prob" }, bar,
      h("span", { class: "label" }, s.probs ? `${name} ${(p * 100).toFixed(0)} %` : name));
  }));
  const img = frameImage(s.step);
  if (img.complete && img.naturalWidth) draw(img);
  else img.onload = () => { if (open && open.steps[index] === s) draw(img); };
  for (let k = 1; k <= 8 && i + k < open.steps.length; k++) frameImage(open.steps[i + k].step);
}

function toggle() {
  if (timer) stop();
  else play();
}

function play() {
  if (!open || !open.steps.length) return;
  if (index >= open.steps.length - 1) show(0);
  ui.play.textContent = "Pause";
  const period = 1000 / (open.rate_hz || 20);
  timer = setInterval(() => {
    if (index >= open.steps.length - 1) { stop(); return; }
    const next = frameImage(open.steps[index + 1].step);
    if (next.complete) show(index + 1);  // else wait for it: playback never skips a frame
  }, period);
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  if (ui.play) ui.play.textContent = "Play";
}

function close() {
  stop();
  open = null;
  ui.detail.hidden = true;
  renderList();
}

async function change(what, path, body, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return null;
  stop();
  try {
    const reply = await api.post(path, body);
    say(what(reply));
    return reply;
  } catch (err) {
    say(err.message, true);
    return null;
  }
}

async function cut() {
  const id = open.episode.id;
  const a = Number(ui.from.value), b = Number(ui.to.value);
  if (ui.from.value === "" || ui.to.value === "" || !(a < b)) {
    say("Choose the steps to cut first.", true);
    return;
  }
  const reply = await change(
    (r) => `Cut ${r.removed} steps from episode ${id}` +
      (r.tail ? `; the steps after the cut are episode ${r.tail.id}.` : "."),
    `/api/episodes/${id}/cut`, { from_step: a, to_step: b },
    `Cut steps ${a} to ${b - 1} out of episode ${id}? This cannot be undone.`);
  if (reply) {
    await load();
    await openEpisode(id, true);
  }
}

async function remove() {
  const id = open.episode.id;
  const reply = await change((r) => `Deleted episode ${id} (${r.removed} steps).`,
    `/api/episodes/${id}/delete`, {}, `Delete episode ${id} and its ${open.steps.length} steps? ` +
    "This cannot be undone.");
  if (reply) {
    close();
    await load();
  }
}

async function mark() {
  const id = open.episode.id;
  const reward = ui.reward.value === "" ? null : Number(ui.reward.value);
  const reply = await change((r) => `Episode ${id}: ${r.episode.outcome}` +
    (r.episode.final_reward == null ? "." : `, final reward ${r.episode.final_reward}.`),
    `/api/episodes/${id}/outcome`, { outcome: ui.outcome.value, final_reward: reward });
  if (reply) {
    open.episode = reply.episode;
    const i = episodes.findIndex((e) => e.id === id);
    if (i >= 0) episodes[i] = reply.episode;
    renderList();
    const badge = ui.detail.querySelector(".cur-head .cur-outcome");
    badge.textContent = reply.episode.outcome;
    badge.className = `cur-outcome out-${reply.episode.outcome}`;
  }
}
