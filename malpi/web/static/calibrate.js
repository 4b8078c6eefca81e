// Calibrate: `malpi setup`'s motor test and calibration, on the running car, through its daemon.
//
// The robot decides everything (paused only, the setup's power and time bounds, the values'
// validation); this page shows what it offers: each output with a Run button (the wheels off
// the ground, confirmed first) and the setup's question, each calibration value with - and +,
// and the steering-trim trial on the floor (confirmed first). STOP pauses the car, which ends
// a running test at once.
import { h } from "./api.js";

let api = null;
let cal = null;  // the robot's calibration reply
let running = false;
const ui = {};

export function mount(el, theApi) {
  api = theApi;
  document.head.append(h("link", { rel: "stylesheet", href: "/static/calibrate.css" }));
  ui.message = h("p", { class: "cal-message", role: "status", "aria-live": "polite" });
  ui.stop = h("button", { class: "stop cal-stop", onclick: stop }, "STOP");
  ui.power = h("input", { type: "range", id: "cal-power", min: "0.05", max: "0.5", step: "0.05",
    value: "0.3", "aria-label": "test power", oninput: showPower });
  ui.powerText = h("output", { for: "cal-power", class: "cal-percent" }, "30 %");
  ui.body = h("div", { class: "cal-body" }, h("p", { class: "hint" }, "Loading…"));
  el.append(
    h("div", { class: "cal-top" },
      h("label", { class: "cal-power" }, "Test power ", ui.power, ui.powerText), ui.stop),
    ui.message, ui.body);
  load();
}

async function load() {
  try {
    cal = await api.get("/api/calibration");
  } catch (err) {
    ui.body.replaceChildren(h("p", { class: "error" }, `Calibration: ${err.message}`),
      h("button", { onclick: load }, "Try again"));
    return;
  }
  ui.power.max = String(cal.max_power);
  render();
}

function showPower() {
  ui.powerText.textContent = `${Math.round(Number(ui.power.value) * 100)} %`;
}

function render() {
  const offGround = cal.outputs.filter((o) => !o.on_floor);
  const floor = cal.outputs.filter((o) => o.on_floor);
  const floorKeys = new Set(floor.map((o) => o.adjusts).filter(Boolean));
  ui.wheelsUp = h("input", { type: "checkbox", id: "cal-wheels-up", onchange: enable });
  ui.onFloor = h("input", { type: "checkbox", id: "cal-on-floor", onchange: enable });
  const sections = [
    h("p", { class: "hint" }, `Drivetrain: ${cal.backend}. The car must be paused (STOP) to ` +
      `test or calibrate; each test runs at most ${cal.max_seconds} s at up to ` +
      `${Math.round(cal.max_power * 100)} % power. Changes are kept for the next boot ` +
      `(${cal.file}).`),
  ];
  if (offGround.length) {
    sections.push(h("section", { class: "cal-section", "aria-label": "motor test" },
      h("h2", {}, "Motor test"),
      h("p", { class: "warning" }, "Lift the car so that its wheels are OFF THE GROUND: " +
        "each Run turns the motors."),
      h("label", { class: "cal-confirm" }, ui.wheelsUp, " The wheels are off the ground"),
      ...offGround.filter((o) => !o.adjusts).map((o) => outputRow(o, "wheels-up"))));
  }
  const adjust = cal.adjustments.filter((a) => !floorKeys.has(a.key));
  if (adjust.length) {
    sections.push(h("section", { class: "cal-section", "aria-label": "calibration" },
      h("h2", {}, "Calibration"),
      ...adjust.map((a) => adjustmentRow(a, offGround.find((o) => o.adjusts === a.key), true))));
  }
  for (const trial of floor) {
    const a = cal.adjustments.find((x) => x.key === trial.adjusts);
    const row = outputRow(trial, "on-floor");
    sections.push(h("section", { class: "cal-section", "aria-label": trial.name },
      h("h2", {}, a ? "Steering trim (on the floor)" : trial.name),
      h("p", { class: "warning" }, `Put the car ON THE FLOOR with 2 m clear ahead: Run drives ` +
        `it ${trial.name} for ${trial.seconds} s.`),
      h("label", { class: "cal-confirm" }, ui.onFloor, " The car is on the floor, 2 m clear ahead"),
      a ? adjustmentRow(a, trial, false, row.querySelector(".cal-result")) : null,
      row));
  }
  if (!offGround.length && !adjust.length && !floor.length) {
    sections.push(h("p", { class: "hint" }, "This drivetrain has nothing to test or calibrate."));
  }
  ui.body.replaceChildren(...sections);
  enable();
}

function outputRow(o, needs) {
  const result = h("p", { class: "cal-result", "aria-live": "polite" });
  const button = h("button", { class: "cal-run", "data-output": o.name, "data-needs": needs,
    onclick: () => runTest(o, result) }, `Run ${o.name}`);
  return h("div", { class: "cal-row" },
    h("div", { class: "cal-what" }, h("strong", {}, o.name),
      h("span", { class: "hint" }, o.question)),
    button, result);
}

// A value's row; after each change its trial runs (as malpi setup runs it after each key press)
// when the page may move the car (the confirmation ticked). ``tryButton``: a button of its own.
function adjustmentRow(a, trial, tryButton, shared = null) {
  const value = h("output", { class: "cal-value" }, format(a.value, a.step));
  const result = shared || h("p", { class: "cal-result", "aria-live": "polite" });
  const after = () => { if (trial && allowed(trial) && !running) runTest(trial, result); };
  const row = h("div", { class: "cal-row cal-adjust", "data-key": a.key },
    h("div", { class: "cal-what" }, h("strong", {}, a.key.split(".").pop()),
      h("span", { class: "hint" }, a.help)),
    h("div", { class: "cal-stepper" },
      h("button", { class: "minus", "aria-label": `lower ${a.key}`,
        onclick: () => change(a, -1, value, after) }, "−"),
      value,
      h("button", { class: "plus", "aria-label": `raise ${a.key}`,
        onclick: () => change(a, 1, value, after) }, "+")));
  if (trial && tryButton) {
    row.append(h("button", { class: "cal-run", "data-output": trial.name, "data-needs": "wheels-up",
      onclick: () => runTest(trial, result) }, `Try (${trial.name})`));
  }
  if (!shared) row.append(result);
  return row;
}

function format(value, step) {
  const decimals = step >= 1 ? 0 : Math.min(3, String(step).split(".")[1]?.length ?? 0);
  return Number(value).toFixed(decimals);
}

function allowed(output) {
  return output.on_floor ? ui.onFloor.checked : ui.wheelsUp.checked;
}

function enable() {
  for (const b of ui.body.querySelectorAll(".cal-run")) {
    const ok = b.dataset.needs === "on-floor" ? ui.onFloor.checked : ui.wheelsUp.checked;
    b.disabled = running || !ok;
  }
}

async function runTest(o, result) {
  if (running) return;
  running = true;
  enable();
  const power = o.uses_power ? Number(ui.power.value) : 0.1;
  const seconds = Math.min(o.seconds, cal.max_seconds);
  say(`Running ${o.name}…`);
  result.textContent = "";
  try {
    const r = await api.post("/api/calibration/test", { output: o.name, power, seconds });
    result.textContent = r.completed
      ? `Ran ${r.ran_s.toFixed(1)} s. ${o.question}`
      : `Stopped after ${r.ran_s.toFixed(1)} s: ${r.stopped_by}.`;
    say(r.completed ? `${o.name}: done` : `${o.name}: stopped`);
  } catch (err) {
    result.textContent = "";
    say(err.message, true);
  } finally {
    running = false;
    enable();
  }
}

async function change(a, direction, output, after) {
  const raw = Math.min(a.high, Math.max(a.low, a.value + direction * a.step));
  const value = a.step >= 1 ? Math.round(raw) : Math.round(raw * 1000) / 1000;
  if (value === a.value) return;
  try {
    const r = await api.post("/api/calibration/set", { key: a.key, value });
    a.value = r.value;
    output.textContent = format(r.value, a.step);
    say(r.persisted ? `${a.key} = ${format(r.value, a.step)} (kept for the next boot)`
      : `${a.key} = ${format(r.value, a.step)}; ${r.note}`, !r.persisted);
    after();
  } catch (err) {
    say(err.message, true);
  }
}

async function stop() {
  try {
    await api.post("/api/stop");
    say("Paused: the motors are stopped.");
  } catch (err) {
    say(`Stop: ${err.message}`, true);
  }
}

function say(text, error = false) {
  ui.message.textContent = text;
  ui.message.classList.toggle("error", error);
}
