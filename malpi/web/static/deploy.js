// Policies: what runs, what boots, the policies kept on the robot with how each did in training
// and evaluation; push a bundle (with progress), keep the running one, roll back.
//
// The robot validates every bundle completely before it runs it; a push runs at once but boots
// only when kept ("Keep it" on the push, or "Keep the running policy" after watching it drive).
import { h } from "./api.js";

let api = null;
const ui = {};
let busy = false;

const FIGURES = {  // evaluation keys as people read them, in this order
  tracks: "tracks driven", tracks_completed: "tracks completed", tracks_off_track: "left the track on",
  laps_mean: "laps (mean)", accuracy: "next-action accuracy", dagger_iterations: "DAgger iterations",
  rollout_episodes: "roll-outs", rollouts_off_track: "roll-outs off track",
  agreement: "agreement with the expert", val_nll: "validation NLL", demo_episodes: "demonstrations",
  demo_off_track: "demonstrations off track", best_val_nll: "best validation NLL", epochs: "epochs",
  integer_agreement: "integer model agreement", car: "car", train_seconds: "training time (s)",
};

export function mount(el, theApi) {
  api = theApi;
  document.head.append(h("link", { rel: "stylesheet", href: "/static/deploy.css" }));
  ui.message = h("p", { class: "dep-message", role: "status", "aria-live": "polite" });
  ui.file = h("input", { type: "file", accept: ".malpi", id: "dep-file", "aria-label": "policy bundle" });
  ui.keepNew = h("input", { type: "checkbox", id: "dep-keep-new" });
  ui.upload = h("button", { class: "dep-upload", onclick: upload }, "Push");
  ui.progress = h("progress", { class: "dep-progress", max: "1", value: "0", hidden: true });
  ui.keep = h("button", { class: "dep-keep", onclick: keep }, "Keep the running policy");
  ui.rollback = h("button", { class: "dep-rollback", onclick: rollback }, "Roll back");
  ui.body = h("div", { class: "dep-body" }, h("p", { class: "hint" }, "Loading…"));
  el.append(
    h("section", { class: "dep-box", "aria-label": "push a policy" },
      h("h2", {}, "Push a policy"),
      h("div", { class: "dep-row" }, ui.file,
        h("label", { class: "dep-check" }, ui.keepNew, " Keep it (boot it from now on)"),
        ui.upload),
      ui.progress,
      h("div", { class: "dep-row" }, ui.keep, ui.rollback,
        h("button", { class: "quiet", onclick: load }, "Refresh"))),
    ui.message, ui.body);
  load();
}

function say(text, error = false) {
  ui.message.textContent = text;
  ui.message.classList.toggle("error", error);
}

function enable() {
  for (const b of [ui.upload, ui.keep, ui.rollback]) b.disabled = busy;
}

async function load() {
  let list;
  try {
    list = await api.get("/api/policies");
  } catch (err) {
    ui.body.replaceChildren(h("p", { class: "error" }, `Policies: ${err.message}`));
    return;
  }
  // One card for a policy that both runs and boots (the usual case), two when they differ.
  const same = (a, b) => a && b && a.sha256 && a.sha256 === b.sha256;
  const sections = [
    same(list.running, list.boot)
      ? h("div", { class: "dep-now" }, card("Running, and boots", list.running))
      : h("div", { class: "dep-now" },
        card("Running", list.running, "No policy runs."),
        card("Boots", list.boot, "Nothing boots: the car has no policy.")),
  ];
  if (list.policy_path) {
    sections.push(h("p", { class: "hint" }, `policy.path is set (${list.policy_path}): the car ` +
      "boots that file whatever is kept; pushes run until the next boot."));
  }
  sections.push(h("h2", {}, `Kept on the robot (${list.history.length}, newest first)`));
  sections.push(list.history.length
    ? h("div", { class: "dep-list" }, ...list.history.map((p) => card(null, p)))
    : h("p", { class: "hint" }, "None kept: the car boots the shipped default."));
  if (list.shipped) {
    sections.push(h("h2", {}, "Shipped default"),
      same(list.shipped, list.running) || same(list.shipped, list.boot)
        ? h("p", { class: "hint" }, `${list.shipped.label}, shown above.`)
        : card(null, list.shipped));
  }
  ui.body.replaceChildren(...sections);
}

function card(title, p, none = "") {
  if (!p) return h("section", { class: "dep-card" }, title ? h("h3", {}, title) : null,
    h("p", { class: "hint" }, none));
  const flags = [p.running ? h("span", { class: "dep-flag run" }, "running") : null,
    p.boots ? h("span", { class: "dep-flag boot" }, "boots") : null];
  const facts = [
    p.source, p.trainer ? `made by ${p.trainer}` : null,
    p.created ? `created ${p.created.replace("T", " ").replace("+00:00", " UTC")}` : null,
    p.bytes != null ? `${(p.bytes / 1048576).toFixed(1)} MB` : null,
    p.sha256 ? `sha256 ${p.sha256.slice(0, 12)}…` : null, p.note || null,
  ].filter(Boolean);
  const ev = Object.entries(p.evaluation || {});
  ev.sort((a, b) => Object.keys(FIGURES).indexOf(a[0]) - Object.keys(FIGURES).indexOf(b[0]));
  return h("section", { class: "dep-card", "data-label": p.label || "" },
    title ? h("h3", {}, title) : null,
    h("div", { class: "dep-title" }, h("strong", {}, p.label || "unknown"), ...flags),
    h("p", { class: "hint" }, facts.join(" · ")),
    p.error ? h("p", { class: "error" }, `Unreadable: ${p.error}`) : null,
    ev.length ? h("table", { class: "dep-figures" }, h("tbody", {},
      ...ev.map(([k, v]) => h("tr", {}, h("th", {}, FIGURES[k] || k), h("td", {}, figure(v))))))
      : h("p", { class: "hint" }, "No evaluation figures in its provenance."));
}

function figure(v) {
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(v < 1 ? 3 : 1);
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

async function act(what, fn) {
  if (busy) return;
  busy = true;
  enable();
  say(`${what}…`);
  try {
    const r = await fn();
    say(r.note || `${what}: done.`);
  } catch (err) {
    say(`${what}: ${err.message}`, true);
  } finally {
    busy = false;
    enable();
    ui.progress.hidden = true;
    load();
  }
}

function upload() {
  const file = ui.file.files[0];
  if (!file) { say("Choose a .malpi bundle first.", true); return; }
  if (file.size > 64 * 1024 * 1024) { say("A bundle may be at most 64 MiB.", true); return; }
  const keepIt = ui.keepNew.checked;
  ui.progress.hidden = false;
  ui.progress.value = 0;
  act(`Pushing ${file.name}`, async () => {
    const r = await api.upload(`/api/policy${keepIt ? "?keep=1" : ""}`, file, (f) => {
      ui.progress.value = f;
      if (f >= 1) say("Uploaded; the robot is validating it…");
    });
    return { note: `${r.version} runs (episode ${r.episode}, ${r.load_ms} ms). ${r.note || ""}` };
  });
}

function keep() {
  act("Keeping the running policy", () => api.post("/api/policy/keep"));
}

function rollback() {
  if (!window.confirm("Roll back? From a pushed policy the car returns to its boot policy; from " +
    "the boot policy, that one is dropped and the one kept before it runs and boots.")) return;
  act("Rolling back", async () => {
    const r = await api.post("/api/policy/rollback");
    return { note: `${r.version} runs. ${r.note || ""}` };
  });
}
