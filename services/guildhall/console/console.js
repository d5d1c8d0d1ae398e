// Guildhall's operators' console: a page per hash route (#/players, #/boards, ...), each built
// from the admin API's JSON. Everything a player could have written is put on the page as text
// (`textContent`), never parsed as HTML.
"use strict";

const KEY_STORE = "guildhall.console.key";
const main = () => document.getElementById("main");

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main().replaceChildren(...nodes);
}

function notice(message, isError) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = !message;
}

function when(value) {
  if (value === undefined || value === null || value === "") return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(date) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function table(rows, columns, empty) {
  if (!rows.length) return el("p", { class: "muted", text: empty || "Nothing here." });
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c.label })))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((c) => {
      const value = c.get(row);
      return el("td", { class: c.num ? "num" : null }, value instanceof Node ? value : value ?? "");
    })))),
  );
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v ?? "")]));
}

function quote(text) {
  return el("span", { class: "quote", text: text ?? "" });
}

function link(href, text) {
  return el("a", { href, text });
}

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY_STORE) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401) signOut("The key was refused: " + (error.message || "sign in again."));
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return data;
}

// Runs an action button's call, reports its outcome and re-renders the page.
function action(label, run, options) {
  const button = el("button", { type: "button", class: (options && options.danger) ? "danger" : "plain", text: label });
  button.addEventListener("click", async () => {
    if (options && options.confirm && !window.confirm(options.confirm)) return;
    button.disabled = true;
    try {
      await run();
      notice(label + ": done.");
      route();
    } catch (error) {
      notice(label + " failed: " + error.message + (error.code ? " (" + error.code + ")" : ""), true);
      button.disabled = false;
    }
  });
  return button;
}

// A list with a "More" button while the API returns a `next_cursor`. `items` picks the array
// out of a page.
function paged(path, items, columns, empty) {
  const holder = el("div");
  const rows = [];
  const more = el("button", { type: "button", class: "plain", text: "More", hidden: true });
  let cursor = null;
  async function load() {
    const separator = path.includes("?") ? "&" : "?";
    const page = await api("GET", cursor ? path + separator + "cursor=" + encodeURIComponent(cursor) : path);
    rows.push(...items(page));
    cursor = page.next_cursor || null;
    holder.replaceChildren(table(rows, columns, empty));
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => load().catch((e) => notice(e.message, true)));
  load().catch((e) => notice("Loading failed: " + e.message, true));
  return el("div", {}, holder, more);
}

function searchBar(placeholder, value, onSubmit, extra) {
  const input = el("input", { type: "search", name: "q", placeholder, value: value || "" });
  const form = el("form", { class: "bar" }, input, extra || null, el("button", { type: "submit", text: "Search" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit(input.value.trim());
  });
  return form;
}

// ------------------------------------------------------------------ pages

const pages = {};

pages.live = async () => {
  const cards = el("div", { class: "cards" });
  show(el("h1", { text: "Live" }), cards, el("p", { class: "muted", text: "Refreshed every 5 s, summed over every instance that reported in the last 15 s." }));
  async function refresh() {
    const s = await api("GET", "/v1/admin/stats");
    const card = (label, value, id) => el("div", { class: "card", id }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
    cards.replaceChildren(
      card("Players connected", s.players_connected, "stat-players"),
      card("Requests per second", s.requests_per_second.toFixed(1), "stat-rps"),
      card("Error rate", (100 * s.error_rate).toFixed(2) + " %", "stat-errors"),
      card("Event backlog", s.event_backlog, "stat-backlog"),
      card("Oldest unsent event", s.oldest_event_age_secs + " s", "stat-oldest"),
      card("Dead events", s.dead_events, "stat-dead"),
      card("Instances", s.instances, "stat-instances"),
    );
  }
  await refresh();
  const timer = setInterval(() => {
    if (!document.body.contains(cards)) return clearInterval(timer);
    refresh().catch((e) => notice(e.message, true));
  }, 5000);
};

pages.players = async (query) => {
  const q = new URLSearchParams(query).get("q") || "";
  const bar = searchBar("id, username or email prefix", q, (text) => { location.hash = "#/players?q=" + encodeURIComponent(text); });
  const list = paged("/v1/admin/accounts?query=" + encodeURIComponent(q), (p) => p.accounts, [
    { label: "Username", get: (a) => link("#/player/" + a.id, a.username || a.id) },
    { label: "Display name", get: (a) => a.display_name },
    { label: "Email", get: (a) => a.email },
    { label: "Created", get: (a) => when(a.created_at) },
    { label: "Status", get: (a) => a.ban ? "banned" : "" },
  ], "No account matches.");
  show(el("h1", { text: "Players" }), bar, list);
};

pages.player = async (_, id) => {
  const a = await api("GET", "/v1/admin/accounts/" + encodeURIComponent(id));
  const account = a.account || a;
  const banned = Boolean(a.ban || account.ban);
  const reason = el("input", { name: "reason", placeholder: "reason", value: "" });
  show(
    el("h1", { text: "Player " + (account.username || account.id) }),
    facts([
      ["Id", account.id],
      ["Username", account.username],
      ["Display name", account.display_name],
      ["Email", account.email],
      ["Created", when(account.created_at)],
      ["Ban", banned ? JSON.stringify(a.ban || account.ban) : "none"],
    ]),
    el("h2", { text: "Actions" }),
    el("div", { class: "actions" },
      banned
        ? action("Unban", () => api("DELETE", "/v1/admin/accounts/" + id + "/ban"))
        : [reason, action("Ban", () => api("POST", "/v1/admin/accounts/" + id + "/ban", { reason: reason.value || "banned by an operator" }), { danger: true })],
      action("End all sessions", () => api("POST", "/v1/admin/accounts/" + id + "/sessions/revoke")),
      action("Delete account", () => api("DELETE", "/v1/admin/accounts/" + id), { danger: true, confirm: "Erase this account and everything it owns?" }),
    ),
    el("h2", { text: "Sessions" }),
    table(a.sessions || [], [
      { label: "Session", get: (s) => s.id },
      { label: "Started", get: (s) => when(s.created_at) },
      { label: "Last used", get: (s) => when(s.last_used_at || s.refreshed_at) },
    ], "No live session."),
    el("h2", { text: "Sanctions" }),
    table(a.sanctions || [], [
      { label: "Kind", get: (s) => s.kind },
      { label: "Scope", get: (s) => s.scope || s.channel_id || "global" },
      { label: "Reason", get: (s) => quote(s.reason) },
      { label: "Until", get: (s) => when(s.expires_at) || "permanent" },
    ], "No sanction."),
    el("h2", { text: "Records" }),
    table(a.records || [], [
      { label: "Board", get: (r) => link("#/board/" + r.leaderboard_id, r.leaderboard_id) },
      { label: "Score", get: (r) => r.score, num: true },
      { label: "Rank", get: (r) => r.rank, num: true },
    ], "No record."),
    el("h2", { text: "Assets" }),
    table(a.assets || [], [
      { label: "Asset", get: (x) => x.id },
      { label: "Kind", get: (x) => x.kind || x.purpose },
      { label: "State", get: (x) => x.state },
      { label: "Bytes", get: (x) => x.size_bytes ?? x.size, num: true },
    ], "No asset."),
  );
};

pages.boards = async () => {
  show(el("h1", { text: "Boards" }), paged("/v1/leaderboards?limit=50", (p) => p.leaderboards, [
    { label: "Board", get: (b) => link("#/board/" + b.id, b.id) },
    { label: "Sort", get: (b) => b.sort },
    { label: "Operator", get: (b) => b.operator },
    { label: "Next reset", get: (b) => when(b.next_reset_at) || "never" },
  ], "No board yet."));
};

pages.board = async (_, id) => {
  const board = await api("GET", "/v1/leaderboards/" + encodeURIComponent(id));
  show(
    el("h1", { text: "Board " + board.id }),
    facts([
      ["Sort", board.sort],
      ["Operator", board.operator],
      ["Reset schedule", board.reset_schedule || board.reset || "none"],
      ["Next reset", when(board.next_reset_at) || "never"],
    ]),
    el("div", { class: "actions" },
      action("Close the season now", () => api("POST", "/v1/admin/leaderboards/" + id + "/seasons/close"), { confirm: "Close the live season and start a new one?" }),
    ),
    el("h2", { text: "Top records" }),
    paged("/v1/leaderboards/" + encodeURIComponent(id) + "/records?limit=50", (p) => p.records, [
      { label: "Rank", get: (r) => r.rank, num: true },
      { label: "Player", get: (r) => link("#/player/" + r.owner_id, r.owner_name || r.owner_id) },
      { label: "Score", get: (r) => r.score, num: true },
      { label: "Updated", get: (r) => when(r.updated_at) },
      { label: "", get: (r) => action("Delete record", () => api("DELETE", "/v1/admin/leaderboards/" + id + "/records/" + r.owner_id), { danger: true, confirm: "Delete this player's record?" }) },
    ], "No record yet."),
  );
};

pages.chat = async (query) => {
  const state = new URLSearchParams(query).get("state") || "open";
  const picker = el("select", { name: "state" }, ["open", "resolved"].map((s) => el("option", { value: s, selected: s === state, text: s })));
  picker.addEventListener("change", () => { location.hash = "#/chat?state=" + picker.value; });
  show(
    el("h1", { text: "Chat moderation" }),
    el("form", { class: "bar" }, el("label", { text: "Reports: " }), picker),
    paged("/v1/admin/chat/reports?state=" + state, (p) => p.reports, [
      { label: "Reported", get: (r) => when(r.last_reported_at || r.created_at) },
      { label: "Reports", get: (r) => r.report_count ?? r.count, num: true },
      { label: "Sender", get: (r) => link("#/player/" + r.sender_id, r.sender_name || r.sender_id) },
      { label: "Channel", get: (r) => r.channel_id },
      { label: "Message", get: (r) => quote(r.text) },
      { label: "Reason", get: (r) => quote(r.reason || (r.reasons || []).join("; ")) },
      { label: "", get: (r) => state !== "open" ? (r.resolution || "") : el("div", { class: "actions" },
        action("Dismiss", () => api("POST", "/v1/admin/chat/reports/" + r.id + "/resolve", { action: "dismissed" })),
        action("Delete message", async () => {
          await api("DELETE", "/v1/admin/chat/messages/" + r.message_id);
          await api("POST", "/v1/admin/chat/reports/" + r.id + "/resolve", { action: "message_deleted" });
        }, { danger: true })) },
    ], state === "open" ? "No open report." : "No resolved report."),
  );
};

pages.uploads = async (query) => {
  const owner = new URLSearchParams(query).get("owner") || "";
  const bar = searchBar("player id", owner, (text) => { location.hash = "#/uploads?owner=" + encodeURIComponent(text); });
  if (!owner) return show(el("h1", { text: "Uploads" }), bar, el("p", { class: "muted", text: "Enter a player's id to list their assets." }));
  show(el("h1", { text: "Uploads" }), bar, paged("/v1/admin/assets?owner_id=" + encodeURIComponent(owner), (p) => p.assets, [
    { label: "Asset", get: (x) => x.url ? el("a", { href: x.url, rel: "noreferrer", target: "_blank", text: x.id }) : x.id },
    { label: "Kind", get: (x) => x.kind || x.purpose },
    { label: "State", get: (x) => x.state },
    { label: "Bytes", get: (x) => x.size_bytes ?? x.size, num: true },
    { label: "Created", get: (x) => when(x.created_at) },
    { label: "", get: (x) => action("Take down", () => api("DELETE", "/v1/admin/assets/" + x.id), { danger: true, confirm: "Delete these bytes and stop serving them?" }) },
  ], "This player has no asset."));
};

pages.audit = async () => {
  show(el("h1", { text: "Audit log" }), paged("/v1/admin/audit?limit=50", (p) => p.entries, [
    { label: "When", get: (e) => when(e.at || e.created_at) },
    { label: "Key", get: (e) => e.key_name || e.key_id },
    { label: "Action", get: (e) => e.action },
    { label: "Target", get: (e) => e.target },
    { label: "Detail", get: (e) => quote(e.detail ? JSON.stringify(e.detail) : "") },
  ], "No admin action yet."));
};

// ------------------------------------------------------------------ sign-in and routing

function signIn() {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { type: "password", name: "key", autocomplete: "off", placeholder: "server key" });
  const form = el("form", { class: "signin", id: "signin" },
    el("h1", { text: "Sign in" }),
    el("p", { text: "Paste a server key: GUILDHALL_ADMIN_KEY or a named key from /v1/admin/keys. It stays in this tab only." }),
    el("div", { class: "bar" }, input, el("button", { type: "submit", text: "Sign in" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    try {
      await whoami();
      notice("");
      if (!location.hash || location.hash === "#/signin") location.hash = "#/live";
      else route();
    } catch (error) {
      sessionStorage.removeItem(KEY_STORE);
      notice("Sign-in failed: " + error.message, true);
    }
  });
  show(form);
  input.focus();
}

async function whoami() {
  const me = await api("GET", "/v1/admin/whoami");
  document.getElementById("who").textContent = (me.name || "key") + " · " + (me.scopes || []).join(", ");
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  return me;
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  signIn();
  if (message) notice(message, true);
}

async function route() {
  if (!sessionStorage.getItem(KEY_STORE)) return signIn();
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const page = pages[name] ? name : "live";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (page === "player" && a.dataset.page === "players") || (page === "board" && a.dataset.page === "boards"));
  }
  try {
    await pages[page](query || "", ...rest.map(decodeURIComponent));
    main().dataset.page = page;
  } catch (error) {
    notice("Could not load the page: " + error.message, true);
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { notice(""); route(); });
if (sessionStorage.getItem(KEY_STORE)) whoami().then(route, () => signIn());
else signIn();
