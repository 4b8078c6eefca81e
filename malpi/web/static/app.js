// The console page: log in, then the tabs. Each tab's module exports mount(element, api).
import { api, setCsrf, whenLoggedOut } from "./api.js";
import * as drive from "./drive.js";

const PANELS = { curate: "./curate.js", deploy: "./deploy.js", calibrate: "./calibrate.js" };
const $ = (id) => document.getElementById(id);

async function start() {
  const session = await api.get("/api/session");
  if (session.logged_in) enter(session.csrf);
  else showLogin();
}

function showLogin(message = "") {
  $("console").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("password").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const reply = await api.post("/api/login", { password: $("password").value });
    $("password").value = "";
    enter(reply.csrf);
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("logout").addEventListener("click", async () => {
  drive.leave();
  try { await api.post("/api/logout"); } finally { location.reload(); }
});

whenLoggedOut(() => { drive.leave(); showLogin("Your session ended: log in again."); });

let entered = false;
function enter(csrf) {
  setCsrf(csrf);
  $("login").hidden = true;
  $("console").hidden = false;
  if (entered) return;
  entered = true;
  drive.mount($("tab-drive"), api);
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.addEventListener("click", () => show(tab.dataset.tab));
  }
}

const mounted = new Set(["drive"]);
async function show(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
    $(`tab-${tab.dataset.tab}`).hidden = tab.dataset.tab !== name;
  }
  if (name !== "drive") drive.release();  // leaving the drive tab lets go of every control
  if (!mounted.has(name)) {
    mounted.add(name);
    const panel = await import(PANELS[name]);
    panel.mount($(`tab-${name}`), api);
  }
}

start().catch((err) => showLogin(`The console did not start: ${err.message}`));
