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
    { label: "Username", get: (s) => link("#/player/" + s.account.id, s.account.username) },
    { label: "Display name", get: (s) => s.account.display_name },
    { label: "Email", get: (s) => s.account.guest ? "guest" : s.account.email },
    { label: "Created", get: (s) => when(s.account.created_at) },
    { label: "Status", get: (s) => s.banned ? "banned" : "" },
  ], "No account matches.");
  show(el("h1", { text: "Players" }), bar, list);
};

pages.player = async (_, id) => {
  const path = "/v1/admin/accounts/" + encodeURIComponent(id);
  const view = await api("GET", path);
  const account = view.account;
  const ban = view.ban && view.ban.in_force ? view.ban : null;
  const reason = el("input", { name: "reason", placeholder: "reason", value: "" });
  const minutes = el("input", { name: "minutes", type: "number", min: "1", placeholder: "minutes (empty: for good)" });
  // Each service serves its own part of the account (`parts`): records, assets, sanctions.
  show(
    el("h1", { text: "Player " + account.username }),
    facts([
      ["Id", account.id],
      ["Username", account.username],
      ["Display name", account.display_name],
      ["Email", account.guest ? "guest (device sign-in)" : account.email],
      ["Created", when(account.created_at)],
      ["Live sessions", String(view.live_session_count)],
      ["Ban", ban ? (ban.reason || "no reason given") + " · until " + (when(ban.until) || "lifted") + " · by " + ban.issued_by_name : "none"],
    ]),
    el("h2", { text: "Actions" }),
    el("div", { class: "actions" },
      ban
        ? action("Unban", () => api("DELETE", path + "/ban"))
        : [reason, minutes, action("Ban", () => api("POST", path + "/ban", minutes.value ? { reason: reason.value || null, minutes: Number(minutes.value) } : { reason: reason.value || null }), { danger: true })],
      action("End all sessions", () => api("POST", path + "/sessions/revoke")),
      action("Delete account", async () => { await api("DELETE", path); location.hash = "#/players"; }, { danger: true, confirm: "Erase this account and everything it owns?" }),
    ),
    el("h2", { text: "Live sessions" }),
    table(view.live_sessions, [
      { label: "Session", get: (s) => s.id },
      { label: "Started", get: (s) => when(s.created_at) },
      { label: "Refreshed", get: (s) => when(s.refreshed_at) },
      { label: "Expires", get: (s) => when(s.expires_at) },
    ], "No live session."),
    el("h2", { text: "Records" }),
    paged(view.parts.records, (p) => p.records, [
      { label: "Board", get: (r) => link("#/board/" + r.board_id, r.board_id) },
      { label: "Season", get: (r) => r.live ? r.season + " (live)" : r.season, num: true },
      { label: "Score", get: (r) => r.score, num: true },
      { label: "Rank", get: (r) => r.rank, num: true },
    ], "No record."),
    el("h2", { text: "Sanctions" }),
    paged(view.parts.sanctions, (p) => p.sanctions, [
      { label: "Kind", get: (s) => s.kind },
      { label: "Scope", get: (s) => s.scope },
      { label: "Reason", get: (s) => quote(s.reason) },
      { label: "Until", get: (s) => when(s.until) || "for good" },
      { label: "In force", get: (s) => s.in_force ? "yes" : "no" },
    ], "No sanction."),
    el("h2", { text: "Assets" }),
    paged(view.parts.assets, (p) => p.assets, [
      { label: "Asset", get: (x) => x.id },
      { label: "Purpose", get: (x) => x.purpose },
      { label: "State", get: (x) => x.state },
      { label: "Bytes", get: (x) => x.size_bytes, num: true },
    ], "No asset."),
  );
};

pages.boards = async () => {
  show(el("h1", { text: "Boards" }), paged("/v1/leaderboards?limit=50", (p) => p.boards, [
    { label: "Board", get: (b) => link("#/board/" + b.id, b.id) },
    { label: "Sort", get: (b) => b.sort },
    { label: "Operator", get: (b) => b.operator },
    { label: "Reset", get: (b) => b.reset || "never" },
    { label: "Season", get: (b) => b.season.number, num: true },
    { label: "Season ends", get: (b) => when(b.season.ends_at) || "never" },
  ], "No board yet."));
};

pages.board = async (_, id) => {
  const board = await api("GET", "/v1/leaderboards/" + encodeURIComponent(id));
  show(
    el("h1", { text: "Board " + board.id }),
    facts([
      ["Sort", board.sort],
      ["Operator", board.operator],
      ["Bounds", (board.min_score ?? "−∞") + " … " + (board.max_score ?? "∞")],
      ["Reset", board.reset || "never"],
      ["Season", board.season.number + ", since " + when(board.season.started_at)],
      ["Season ends", when(board.season.ends_at) || "never"],
    ]),
    el("div", { class: "actions" },
      action("Close the season now", () => api("POST", "/v1/admin/leaderboards/" + id + "/seasons/close"), { confirm: "Close the live season and start a new one?" }),
    ),
    el("h2", { text: "Top records" }),
    paged("/v1/leaderboards/" + encodeURIComponent(id) + "/records?limit=50", (p) => p.records, [
      { label: "Rank", get: (r) => r.rank, num: true },
      { label: "Player", get: (r) => link("#/player/" + r.owner_id, r.name || r.owner_id) },
      { label: "Score", get: (r) => r.score, num: true },
      { label: "Updated", get: (r) => when(r.updated_at) },
      { label: "", get: (r) => action("Delete record", () => api("DELETE", "/v1/admin/leaderboards/" + id + "/records/" + r.owner_id), { danger: true, confirm: "Delete this player's record?" }) },
    ], "No record yet."),
  );
};

pages.chat = async (query) => {
  const status = new URLSearchParams(query).get("status") === "resolved" ? "resolved" : "open";
  const picker = el("select", { name: "status" }, ["open", "resolved"].map((s) => el("option", { value: s, selected: s === status, text: s })));
  picker.addEventListener("change", () => { location.hash = "#/chat?status=" + picker.value; });
  const resolve = (c, action) => api("POST", "/v1/admin/chat/reports/" + c.id + "/resolve", { action });
  show(
    el("h1", { text: "Chat moderation" }),
    el("form", { class: "bar" }, el("label", { text: "Reports: " }), picker),
    paged("/v1/admin/chat/reports?status=" + status + "&order=" + (status === "open" ? "most_reported" : "newest"), (p) => p.reports, [
      { label: "Last reported", get: (c) => when(c.last_reported_at) },
      { label: "Reports", get: (c) => c.report_count, num: true },
      { label: "Sender", get: (c) => c.message.sender_id ? link("#/player/" + c.message.sender_id, c.message.sender_name || c.message.sender_id) : "(erased)" },
      { label: "Channel", get: (c) => c.message.channel },
      { label: "Message", get: (c) => quote(c.message.body) },
      { label: "Reasons", get: (c) => quote(c.reporters.map((r) => r.reason).filter(Boolean).join("; ")) },
      { label: "", get: (c) => status !== "open"
        ? (c.resolution ? c.resolution.action + (c.resolution.note ? ": " + c.resolution.note : "") : "")
        : el("div", { class: "actions" },
          action("Dismiss", () => resolve(c, "dismissed")),
          c.message_deleted ? null : action("Delete message", async () => {
            await api("DELETE", "/v1/admin/chat/messages/" + c.message.id);
            await resolve(c, "message_deleted");
          }, { danger: true })) },
    ], status === "open" ? "No open report." : "No resolved report."),
  );
};

pages.uploads = async (query) => {
  const owner = new URLSearchParams(query).get("owner") || "";
  const bar = searchBar("player id", owner, (text) => { location.hash = "#/uploads?owner=" + encodeURIComponent(text); });
  if (!owner) return show(el("h1", { text: "Uploads" }), bar, el("p", { class: "muted", text: "Enter a player's id to list their assets." }));
  show(el("h1", { text: "Uploads" }), bar, paged("/v1/admin/assets?owner_id=" + encodeURIComponent(owner), (p) => p.assets, [
    { label: "Asset", get: (x) => x.download_url && /^https?:/.test(x.download_url) ? el("a", { href: x.download_url, rel: "noreferrer", target: "_blank", text: x.id }) : x.id },
    { label: "Purpose", get: (x) => x.purpose },
    { label: "Type", get: (x) => x.content_type },
    { label: "State", get: (x) => x.state },
    { label: "Bytes", get: (x) => x.size_bytes, num: true },
    { label: "Created", get: (x) => when(x.created_at) },
    { label: "", get: (x) => action("Take down", () => api("DELETE", "/v1/admin/assets/" + x.id), { danger: true, confirm: "Delete these bytes and stop serving them?" }) },
  ], "This player has no asset."));
};

pages.audit = async () => {
  show(el("h1", { text: "Audit log" }), paged("/v1/admin/audit?limit=50", (p) => p.entries, [
    { label: "When", get: (e) => when(e.at) },
    { label: "Key", get: (e) => e.key_name },
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
  const me = await api("GET", "/v1/admin/keys/me");
  document.getElementById("who").textContent = me.name + " · " + me.scopes.join(", ");
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
