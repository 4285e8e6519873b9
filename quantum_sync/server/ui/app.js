// The web UI: a live file browser, the journal's activity, versions and server status,
// all through the public REST API, /api/sync and /ws.

import { Api } from "./api.js";
import { $, ask, button, el } from "./dom.js";
import { VirtualList } from "./listview.js";
import { Live } from "./live.js";
import { Status } from "./status.js";
import {
  Tree, baseName, conflictOriginal, describe, filterEntries, formatSize, formatTime, joinPath,
  parentOf, sortEntries,
} from "./tree.js";
import { Uploads, filesFromDrop, filesFromInput } from "./upload.js";

const ROW_HEIGHT = 30;
const HIGHLIGHT_MS = 2000;
const FEED_KEEP = 500;
const FEED_FIRST = 100;
// A token is renewed this long before it expires (or at 4/5 of its life when shorter).
const RENEW_BEFORE_MS = 60000;
const TOKEN_KEY = "quantum-sync.token";

const api = new Api();
const tree = new Tree();
const state = {
  dir: "",
  sort: "name",
  ascending: true,
  filter: "",
  cursor: null, // the journal seq the tree reflects
  journal: null, // the journal_id the cursor belongs to
  role: "admin",
  versions: false, // the server keeps versions
  changed: new Map(), // path -> when it changed (highlight)
  feed: [],
  catchingUp: null,
  catchUpAgain: false,
  renewTimer: null,
  credentials: null, // kept in memory only, to renew the token
};

// -- errors ---------------------------------------------------------------------------

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function failed(error) {
  if (error && (error.code === "AUTH_REQUIRED" || error.code === "AUTH_EXPIRED" || error.code === "AUTH_FAILED")) {
    showLogin(error.message);
    return;
  }
  showError(error && error.message ? error.message : String(error));
}

$("error-close").addEventListener("click", () => { $("error").hidden = true; });

// -- auth -----------------------------------------------------------------------------

function showLogin(message = "") {
  live.stop();
  status.stop();
  api.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("user").hidden = true;
  $("logout").hidden = true;
  $("login-user").focus();
}

function useToken({ token, expires_at: expiresAt, role }, user) {
  api.token = token;
  state.role = role || state.role;
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, expires_at: expiresAt, role: state.role, user }));
  $("user").textContent = `${user} (${state.role})`;
  $("user").hidden = false;
  $("logout").hidden = false;
  scheduleRenewal(expiresAt);
  applyRole();
}

function scheduleRenewal(expiresAt) {
  clearTimeout(state.renewTimer);
  const left = new Date(expiresAt).getTime() - Date.now();
  if (!Number.isFinite(left)) return;
  const wait = Math.max(1000, left > RENEW_BEFORE_MS * 2 ? left - RENEW_BEFORE_MS : left * 0.8);
  state.renewTimer = setTimeout(renew, wait);
}

async function renew() {
  if (!state.credentials) {
    showLogin("Your session has ended; log in again.");
    return;
  }
  try {
    const { user, password } = state.credentials;
    useToken(await api.login(user, password), user);
    live.reauthenticate();
  } catch (error) {
    if (error.status === 0) {
      state.renewTimer = setTimeout(renew, 5000); // the server is unreachable: try again
    } else {
      showLogin(error.message);
    }
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("login-user").value;
  const password = $("login-password").value;
  $("login-error").textContent = "";
  try {
    const data = await api.login(user, password);
    state.credentials = { user, password };
    $("login-password").value = "";
    useToken(data, user);
    $("login").hidden = true;
    await start();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", () => {
  state.credentials = null;
  clearTimeout(state.renewTimer);
  showLogin();
});

function applyRole() {
  const writer = state.role !== "read";
  for (const node of document.querySelectorAll(".writer")) node.hidden = !writer;
  document.body.dataset.role = state.role;
}

const canWrite = () => state.role !== "read";

// -- loading and catching up ----------------------------------------------------------

// The whole tree, and the journal's head and identity taken before it: the changes
// after that head are then asked of that journal only.
async function loadTree() {
  for (let attempt = 1; ; attempt++) {
    const head = (await api.metrics()).journal_head;
    let journal;
    try {
      journal = (await api.changes(head, 1)).journal_id;
    } catch (error) {
      // the server was replaced between the two answers: once more
      if (error.code === "CURSOR_EXPIRED" && attempt < 3) continue;
      throw error;
    }
    const list = await api.list();
    tree.reset(list);
    state.cursor = head;
    state.journal = journal;
    await catchUp();
    return head;
  }
}

// The feed's first lines: the journal's last entries up to `head` (later ones come live).
// A journal that keeps fewer entries than that (journal_retention) answers
// CURSOR_EXPIRED: the feed then starts with what comes live.
async function loadFeed(head) {
  let recent = { changes: [] };
  try {
    recent = await api.changes(Math.max(0, head - FEED_FIRST), FEED_FIRST, state.journal);
  } catch (error) {
    if (error.code !== "CURSOR_EXPIRED") throw error;
  }
  const live = state.feed;
  state.feed = [];
  for (const change of recent.changes) if (change.seq <= head) addToFeed(change, false);
  state.feed = live.concat(state.feed).slice(0, FEED_KEEP);
  renderFeed();
}

// Everything after the cursor from /api/changes (never a reload, unless the journal no
// longer holds the cursor or is not the one the cursor belongs to).
function catchUp() {
  if (state.catchingUp) {
    state.catchUpAgain = true;
    return state.catchingUp;
  }
  state.catchingUp = (async () => {
    try {
      do {
        state.catchUpAgain = false;
        let more = true;
        while (more) {
          const page = await api.changes(state.cursor, 1000, state.journal);
          for (const change of page.changes) applyChange(change);
          state.cursor = Math.max(state.cursor, page.cursor);
          more = page.has_more;
        }
      } while (state.catchUpAgain);
    } catch (error) {
      if (error.code === "CURSOR_EXPIRED") {
        state.catchingUp = null;
        await loadTree();
      } else {
        failed(error);
      }
    } finally {
      state.catchingUp = null;
      render();
      renderFeed();
    }
  })();
  return state.catchingUp;
}

function applyChange(change) {
  if (change.seq <= state.cursor) return;
  const now = performance.now();
  for (const path of tree.apply(change.operation)) {
    state.changed.set(path, now);
    for (let parent = parentOf(path); parent; parent = parentOf(parent)) state.changed.set(parent, now);
  }
  state.cursor = change.seq;
  addToFeed(change, true);
}

function onOperation(message) {
  if (state.cursor === null) return; // the first load's catch-up takes it
  if (message.journal_id && message.journal_id !== state.journal) {
    catchUp(); // another journal: answered CURSOR_EXPIRED, then listed anew
  } else if (message.seq === state.cursor + 1 && !state.catchingUp) {
    applyChange(message);
    scheduleRender();
    renderFeed();
  } else if (message.seq > state.cursor) {
    catchUp();
  }
}

// -- the file list --------------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

let highlightTimer = null;
function render() {
  if (!tree.isDirectory(state.dir)) state.dir = "";
  renderCrumbs();
  const entries = sortEntries(filterEntries(tree.children(state.dir), state.filter), state.sort, state.ascending);
  list.setItems(entries);
  $("list-empty").hidden = entries.length > 0;
  $("list-count").textContent = `${entries.length} entr${entries.length === 1 ? "y" : "ies"}`;
  for (const column of document.querySelectorAll(".columns .col[data-sort]")) {
    if (column.dataset.sort === state.sort) column.dataset.order = state.ascending ? "asc" : "desc";
    else delete column.dataset.order;
  }
  const now = performance.now();
  for (const [path, at] of state.changed) if (now - at > HIGHLIGHT_MS) state.changed.delete(path);
  clearTimeout(highlightTimer);
  if (state.changed.size) highlightTimer = setTimeout(() => list.render(), HIGHLIGHT_MS);
}

function renderCrumbs() {
  const crumbs = [button("root", () => go(""))];
  let at = "";
  for (const part of state.dir ? state.dir.split("/") : []) {
    at = joinPath(at, part);
    const target = at;
    crumbs.push(el("span", { className: "sep", text: "/" }), button(part, () => go(target)));
  }
  $("crumbs").replaceChildren(...crumbs);
}

function go(dir) {
  location.hash = dir ? `#/${encodeURIComponent(dir)}` : "#/";
}

function dirFromHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  try {
    return decodeURIComponent(raw);
  } catch (e) {
    return "";
  }
}

window.addEventListener("hashchange", () => {
  state.dir = dirFromHash();
  state.filter = "";
  $("filter").value = "";
  $("list").scrollTop = 0;
  render();
});

function renderRow(metadata) {
  const name = baseName(metadata.path);
  const original = metadata.is_directory ? null : conflictOriginal(metadata.path);
  const nameCell = el("span", { className: "name" }, [
    metadata.is_directory
      ? button(name, () => go(metadata.path), "dir")
      : el("span", { text: name, attrs: { title: metadata.path } }),
    original ? el("span", { className: "badge", text: "conflict copy" }) : null,
  ]);
  const actions = el("span", { className: "actions" });
  if (!metadata.is_directory) actions.append(button("Download", () => download(metadata.path).catch(failed), "act-download"));
  if (canWrite()) {
    actions.append(button("Rename", () => rename(metadata.path).catch(failed), "act-rename"));
    actions.append(button("Delete", () => remove(metadata.path).catch(failed), "act-delete"));
    if (original && tree.get(original)) {
      actions.append(button("Keep this version", () => keep(metadata.path, original).catch(failed), "act-keep"));
    }
  }
  if (state.versions && !metadata.is_directory) {
    actions.append(button("History", () => showVersions(metadata.path).catch(failed), "act-history"));
  }
  const row = el("div", { className: "row", attrs: { role: "row", "data-path": metadata.path } }, [
    nameCell,
    el("span", { className: "size", text: metadata.is_directory ? "" : formatSize(metadata.size) }),
    el("span", { className: "modified", text: formatTime(metadata.modified) }),
    el("span", { className: "hash", text: metadata.hash ? metadata.hash.slice(0, 8) : "", attrs: { title: metadata.hash || "" } }),
    actions,
  ]);
  const changedAt = state.changed.get(metadata.path);
  if (changedAt !== undefined) {
    row.classList.add("changed");
    // a row drawn again (scrolling, another change) goes on fading where it was
    row.style.animationDelay = `${-(performance.now() - changedAt)}ms`;
  }
  return row;
}

const list = new VirtualList($("list"), $("list-spacer"), ROW_HEIGHT, renderRow);

for (const column of document.querySelectorAll(".columns .col[data-sort]")) {
  column.addEventListener("click", () => {
    if (state.sort === column.dataset.sort) state.ascending = !state.ascending;
    else {
      state.sort = column.dataset.sort;
      state.ascending = true;
    }
    render();
  });
}

$("filter").addEventListener("input", () => {
  state.filter = $("filter").value;
  render();
});

// -- actions --------------------------------------------------------------------------

async function download(path) {
  if (!api.token) {
    // a plain link: the browser downloads with Range and ETag as it likes
    const link = el("a", { attrs: { href: api.downloadUrl(path), download: baseName(path) } });
    document.body.append(link);
    link.click();
    link.remove();
    return;
  }
  const blob = await api.downloadBlob(path);
  const url = URL.createObjectURL(blob);
  const link = el("a", { attrs: { href: url, download: baseName(path) } });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function rename(path) {
  const to = await ask(`Rename or move ${path} to:`, { value: path, okText: "Move" });
  if (to === null || to === path) return;
  await api.sync([{ Move: { from: path, to: to.replace(/^\/+/, "") } }]);
}

async function remove(path) {
  const what = tree.isDirectory(path) ? "the folder" : "";
  const operation = seenDelete(path);  // the version shown when the user chose to delete
  const sure = await ask(`Delete ${what} ${path}${what ? " and everything in it" : ""}?`, { okText: "Delete" });
  if (!sure) return;
  await api.sync([{ Delete: operation }]);
}

// A file's Delete names the version the page showed when the user chose (if_match): one
// changed meanwhile is refused by the server (and the refusal shown), never deleted unseen.
// A folder goes whole.
function seenDelete(path) {
  const seen = tree.get(path);
  return seen && !seen.is_directory ? { path, if_match: seen.hash } : { path };
}

async function keep(copy, original) {
  const operation = seenDelete(original);
  const sure = await ask(`Keep ${copy} as ${original}? The other version of ${original} is replaced.`,
    { okText: "Keep this version" });
  if (!sure) return;
  await api.sync([{ Delete: operation }, { Move: { from: copy, to: original } }]);
}

$("new-folder").addEventListener("click", async () => {
  const name = await ask("New folder name:", { value: "", okText: "Create" });
  if (!name) return;
  const path = joinPath(state.dir, name.replace(/^\/+/, ""));
  const metadata = { path, size: 0, modified: new Date().toISOString().replace(/\.\d+Z$/, "Z"), hash: "", is_directory: true };
  await api.sync([{ Create: { metadata } }]).catch(failed);
});

const uploads = new Uploads(api, (message) => showError(message));

$("upload-button").addEventListener("click", () => $("file-input").click());
$("upload-folder-button").addEventListener("click", () => $("folder-input").click());
for (const id of ["file-input", "folder-input"]) {
  $(id).addEventListener("change", async () => {
    const items = filesFromInput($(id));
    $(id).value = "";
    await uploads.add(items, state.dir);
  });
}

let dragDepth = 0;
const dragsFiles = (event) => canWrite() && Array.from(event.dataTransfer.types || []).includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!dragsFiles(event)) return;
  dragDepth++;
  $("drop-hint").hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("drop-hint").hidden = true;
});
document.addEventListener("dragover", (event) => {
  if (dragsFiles(event)) event.preventDefault();
});
document.addEventListener("drop", async (event) => {
  dragDepth = 0;
  $("drop-hint").hidden = true;
  if (!dragsFiles(event)) return;
  event.preventDefault();
  const dir = state.dir;
  try {
    await uploads.add(await filesFromDrop(event.dataTransfer), dir);
  } catch (error) {
    failed(error);
  }
});

// -- activity -------------------------------------------------------------------------

function addToFeed(change, fresh) {
  state.feed.unshift({ change, fresh: fresh ? performance.now() : 0 });
  if (state.feed.length > FEED_KEEP) state.feed.length = FEED_KEEP;
}

function renderFeed() {
  if ($("view-activity").hidden) return; // drawn when shown
  const now = performance.now();
  $("activity").replaceChildren(...state.feed.map(({ change, fresh }) => {
    const { kind, path } = describe(change.operation);
    const conflict = conflictOriginal(path.split(" → ").pop()) !== null;
    const row = el("tr", { attrs: { "data-seq": String(change.seq) } }, [
      el("td", { text: formatTime(change.timestamp) }),
      el("td", { text: kind }),
      el("td", { className: "path" }, [el("span", { text: path }), conflict ? el("span", { className: "badge", text: "conflict copy" }) : null]),
      el("td", { text: change.source_client || "" }),
    ]);
    if (fresh && now - fresh < HIGHLIGHT_MS) row.classList.add("changed");
    return row;
  }));
}

// -- versions -------------------------------------------------------------------------

async function probeVersions() {
  try {
    await api.versions("");
    return true;
  } catch (error) {
    return error.status !== 404;
  }
}

async function showVersions(path, deletedOnly = false) {
  const body = await api.versions(path);
  const versions = body.versions.filter((v) => !deletedOnly || v.deleted);
  $("versions-title").textContent = deletedOnly ? `Deleted files in /${path}` : `History of ${path}`;
  $("versions-empty").hidden = versions.length > 0;
  $("versions-rows").replaceChildren(...versions.map((version) => {
    const target = version.path || path;
    const restore = button("Restore", async () => {
      try {
        await api.restore(target, version.id);
        $("versions").close();
      } catch (error) {
        failed(error);
      }
    }, "act-restore");
    return el("tr", { attrs: { "data-id": String(version.id), "data-path": target, "data-hash": version.hash || "" } }, [
      el("td", { text: target }),
      el("td", { text: formatTime(version.modified) }),
      el("td", { text: formatSize(version.size) }),
      el("td", { text: (version.hash || "").slice(0, 8) }),
      el("td", { text: `${version.source_client || ""}${version.deleted ? " (deleted)" : ""}` }),
      el("td", {}, [canWrite() ? restore : null]),
    ]);
  }));
  $("versions").showModal();
}

$("deleted-button").addEventListener("click", () => showVersions(state.dir, true).catch(failed));

// -- views ----------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
    $(`view-${tab.dataset.view}`).hidden = tab.dataset.view !== name;
  }
  status.show(name === "status");
  if (name === "files") list.render();
  if (name === "activity") renderFeed();
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));

// -- live -----------------------------------------------------------------------------

const status = new Status(api, showError);

function setConnection(connection, detail) {
  const indicator = $("connection");
  indicator.dataset.state = connection;
  indicator.textContent = connection;
  indicator.title = detail || "";
}

const live = new Live(api, {
  onState: setConnection,
  onOpen: () => { if (state.cursor !== null) catchUp(); },
  onOperation,
  onAuth: (data) => {
    if (data.role) {
      state.role = data.role;
      applyRole();
    }
  },
  onAuthError: (message) => showLogin(message.message || "authentication failed"),
});

async function start() {
  $("app").hidden = false;
  applyRole();
  state.cursor = null;
  live.start();
  status.reset();
  const head = await loadTree();
  render();
  await loadFeed(head);
  status.start();
  state.versions = await probeVersions();
  $("deleted-button").hidden = !state.versions;
  if (state.versions) list.render();
  document.body.dataset.ready = "true";
}

async function boot() {
  state.dir = dirFromHash();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      const { token, expires_at: expiresAt, role, user } = JSON.parse(saved);
      useToken({ token, expires_at: expiresAt, role }, user);
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  try {
    await start();
  } catch (error) {
    if (error.status === 401) {
      showLogin(api.token ? error.message : "");
    } else {
      failed(error);
    }
  }
}

boot();
