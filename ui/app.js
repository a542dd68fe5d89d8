// The console: sign-in, Overview, Statistics, Users. Plain modules, no framework, no build
// step. Everything shown comes from the gateway's own API and its /dashboard namespace, and
// every piece of data is set as text (textContent, attributes), never parsed as markup:
// visitor names, cities and user names are typed by strangers.

import { connect } from "./sio.js";
import { drawLine } from "./chart.js";

const TOKEN_KEY = "presence-console-token";
const CHART_SPAN_MS = 5 * 60 * 1000;
const STATS_COALESCE_MS = 250;
const SESSIONS_PER_PAGE = 20;
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

function busy(section, yes) {
  section.setAttribute("aria-busy", yes ? "true" : "false");
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

// ---- session -------------------------------------------------------------------------------

const session = { token: null, role: null, socket: null };

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, init = {}) {
  const r = await fetch(path, {
    ...init,
    headers: { Authorization: `Bearer ${session.token}`, ...(init.headers || {}) },
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body.error || {};
    if (r.status === 401) signOut("The token is no longer accepted; sign in again.");
    throw new ApiError(r.status, e.code || "error", e.message || `HTTP ${r.status}`);
  }
  return body;
}

/** The roles a token claims: a JWT's `roles` (absent: user), or, for anything else,
 * `ADMIN_TOKEN`'s. Only what to show depends on it; the gateway checks every request. */
function claimedRoles(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return ["admin"];
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json);
    return Array.isArray(claims.roles) ? claims.roles : ["user"];
  } catch {
    return [];
  }
}

/** Sign in: the /dashboard namespace accepting the token is the check (no request fails
 * when it is wrong, so a mistyped token leaves nothing in the browser's error log). */
function signIn(token) {
  const roles = claimedRoles(token);
  const role = roles.includes("admin") ? "admin" : roles.includes("dashboard") ? "dashboard" : null;
  if (!role) return Promise.reject(new Error("This token has neither the dashboard nor the admin role."));
  return new Promise((resolve, reject) => {
    let settled = false;
    session.token = token;
    startLive({
      live() {
        if (settled) return;
        settled = true;
        session.role = role;
        sessionStorage.setItem(TOKEN_KEY, token);
        show();
        resolve();
      },
      refused(message) {
        const text = message.startsWith("forbidden")
          ? "This token has neither the dashboard nor the admin role."
          : `Wrong token: ${message}`;
        if (settled) return signOut(text);
        settled = true;
        session.token = null;
        reject(new Error(text));
      },
    });
  });
}

function signOut(message = "") {
  if (session.socket) session.socket.close();
  Object.assign(session, { token: null, role: null, socket: null });
  sessionStorage.removeItem(TOKEN_KEY);
  stats.loaded = false;
  $("signin-error").textContent = message;
  $("token").value = "";
  show();
}

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("signin-error").textContent = "";
  $("signin").setAttribute("aria-busy", "true");
  try {
    await signIn(token);
  } catch (e) {
    $("signin-error").textContent = e.message;
  } finally {
    $("signin").setAttribute("aria-busy", "false");
  }
});
$("signout").addEventListener("click", () => signOut());

// ---- views -----------------------------------------------------------------------------------

const VIEWS = ["overview", "statistics", "users"];

function currentView() {
  const v = location.hash.slice(1);
  if (v === "users" && session.role !== "admin") return "overview";
  return VIEWS.includes(v) ? v : "overview";
}

function show() {
  const signedIn = !!session.role;
  $("signin-view").hidden = signedIn;
  for (const id of ["nav", "conn", "who", "signout"]) $(id).hidden = !signedIn;
  $("nav-users").hidden = session.role !== "admin";
  $("who").textContent = signedIn ? `role: ${session.role}` : "";
  const view = signedIn ? currentView() : null;
  for (const v of VIEWS) $(v).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "statistics") refreshStats();
  if (!signedIn) $("token").focus();
}
window.addEventListener("hashchange", show);

// ---- live feed (/dashboard) ------------------------------------------------------------------

function startLive(signing) {
  if (session.socket) session.socket.close();
  session.socket = connect("/dashboard", { token: session.token }, {
    state(s) {
      $("conn").dataset.state = s;
      $("conn").textContent = s === "live" ? "live" : s === "offline" ? "offline" : `${s}…`;
      if (s === "live") signing.live();
    },
    event(name, data) {
      if (name === "presence_stats") overviewUpdate(data);
      else if (name === "stats_update") statsEvent(data.seq);
      else if (name === "stats_resync") statsEvent(data.lastEventSeq);
      // The gateway closes a dashboard whose token expired, after saying so.
      else if (name === "auth:expired") signOut("The token expired; sign in again.");
    },
    refused: (message) => signing.refused(message),
  });
}

// ---- Overview --------------------------------------------------------------------------------

const series = { online: [], rate: [], latency: [] };
let previous = null; // {t, published}

function overviewUpdate(p) {
  const now = Date.now();
  $("ov-online").textContent = p.onlineUsers;
  $("ov-peak").textContent = p.peakOnline;
  $("ov-female").textContent = p.byGender.female;
  $("ov-male").textContent = p.byGender.male;
  $("ov-other").textContent = p.byGender.other;
  const replicas = p.replicas || [];
  $("ov-nodes").textContent = replicas.length || p.nodes;
  series.online.push({ t: now, v: p.onlineUsers });
  const published = replicas.reduce((n, r) => n + (r.updatesPublished || 0), 0);
  if (previous && now - previous.t >= 500) {
    series.rate.push({ t: now, v: Math.max(0, ((published - previous.published) * 1000) / (now - previous.t)) });
  }
  if (!previous || now - previous.t >= 500) previous = { t: now, published };
  const latencies = replicas.map((r) => r.fanoutLatencyMs && r.fanoutLatencyMs.mean).filter((v) => v != null);
  series.latency.push({ t: now, v: latencies.length ? Math.max(...latencies) : 0 });
  for (const s of Object.values(series)) while (s.length && s[0].t < now - CHART_SPAN_MS) s.shift();
  overviewReplicas = replicas;
  overviewWebhooks(replicas.map((r) => r.webhook).filter(Boolean));
  drawOverview();
  busy($("overview"), false);
}

/** The webhook queue over the replicas that send, and the latest delivery error of any. */
function overviewWebhooks(hooks) {
  $("ov-webhooks").hidden = hooks.length === 0;
  if (!hooks.length) return;
  $("ov-wh-queue").textContent = hooks.reduce((n, h) => n + (h.queued || 0), 0);
  const last = hooks.filter((h) => h.lastErrorAt).sort((a, b) => (a.lastErrorAt < b.lastErrorAt ? 1 : -1))[0];
  $("ov-wh-error").textContent = last ? `${last.lastError}, ${ago(last.lastErrorAt)}` : "none";
}

let overviewReplicas = [];
const lastPublished = new Map(); // node -> {t, n, rate}

function drawOverview() {
  const now = Date.now();
  drawLine($("ch-online"), series.online, now, CHART_SPAN_MS, { hold: true });
  drawLine($("ch-rate"), series.rate, now, CHART_SPAN_MS);
  drawLine($("ch-latency"), series.latency, now, CHART_SPAN_MS);
  fill($("replicas").querySelector("tbody"), overviewReplicas.map((r) => {
    const seen = new Date(r.lastSeenAt).getTime();
    const prev = lastPublished.get(r.node);
    let rate = prev ? prev.rate : null;
    if (prev && seen > prev.t) rate = ((r.updatesPublished - prev.n) * 1000) / (seen - prev.t);
    if (!prev || seen > prev.t) lastPublished.set(r.node, { t: seen, n: r.updatesPublished, rate });
    const s = r.sockets || {};
    return [r.node, s["/"] ?? 0, s["/widget"] ?? 0, s["/dashboard"] ?? 0,
      rate == null ? "–" : rate.toFixed(1),
      r.fanoutLatencyMs ? r.fanoutLatencyMs.mean.toFixed(1) : "–",
      ago(r.lastSeenAt), when(r.startedAt)];
  }));
}
setInterval(() => {
  if (session.role && !$("overview").hidden) drawOverview();
}, 1000);

// ---- Statistics ------------------------------------------------------------------------------

const stats = { loaded: false, inFlight: false, timer: null, latestSeq: 0, report: null, page: 0 };

/** An event with `seq` was stored: fetch once the burst it belongs to has passed. */
function statsEvent(seq) {
  stats.latestSeq = Math.max(stats.latestSeq, seq || 0);
  if (!stats.loaded || $("statistics").hidden) return;
  scheduleStats();
}

function scheduleStats() {
  if (stats.timer || stats.inFlight) return;
  stats.timer = setTimeout(() => {
    stats.timer = null;
    refreshStats();
  }, STATS_COALESCE_MS);
}

async function refreshStats() {
  if (stats.inFlight) return;
  stats.inFlight = true;
  const section = $("statistics");
  if (!stats.loaded) busy(section, true);
  try {
    const r = await api(`/api/stats?tz=${encodeURIComponent(TZ)}`);
    stats.report = r;
    $("st-message").hidden = true;
    renderStats();
  } catch (e) {
    $("st-message").hidden = false;
    $("st-message").textContent = e.status === 503
      ? `Statistics are unavailable: ${e.message}`
      : `Statistics could not be read: ${e.message}`;
  } finally {
    stats.inFlight = false;
    stats.loaded = true;
    busy(section, false);
  }
  // An event arrived while this one was in flight: its answer may predate it.
  if (stats.report && stats.report.lastEventSeq < stats.latestSeq) scheduleStats();
}

function renderStats() {
  const r = stats.report;
  for (const k of ["totalUsers", "totalSessions", "totalMessages", "widgetOpens", "webUniqueUsers", "premiumUniqueUsers"]) {
    $(`st-${k}`).textContent = r[k];
  }
  $("st-onlineWeb").textContent = r.online.web;
  $("st-onlinePremium").textContent = r.online.premium;
  $("st-seq").textContent = r.lastEventSeq;
  $("st-tz").textContent = `(${r.tz || TZ})`;
  renderHeatmap(r.heatmap);
  fill($("countries").querySelector("tbody"), r.countries.map((c) => [c.country, c.users]));
  const pages = Math.max(1, Math.ceil(r.users.length / SESSIONS_PER_PAGE));
  stats.page = Math.min(stats.page, pages - 1);
  const rows = r.users.slice(stats.page * SESSIONS_PER_PAGE, (stats.page + 1) * SESSIONS_PER_PAGE);
  fill($("sessions").querySelector("tbody"), rows.map((u) => [
    u.userName || u.originalUserId, u.userId, u.channel, u.country || "–", u.city || "–",
    u.messageCount, when(u.firstActivity), when(u.lastActivity),
  ]));
  $("sess-page").textContent = `page ${stats.page + 1} of ${pages} (${r.users.length} sessions)`;
  $("sess-prev").disabled = stats.page === 0;
  $("sess-next").disabled = stats.page >= pages - 1;
}

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

function renderHeatmap(rows) {
  const max = Math.max(1, ...rows.flat());
  const grid = [el("span", { class: "corner" })];
  for (let h = 0; h < 24; h++) grid.push(el("span", { class: "hour" }, h));
  rows.forEach((hours, d) => {
    grid.push(el("span", { class: "day" }, DAYS[d]));
    hours.forEach((n, h) => {
      const level = n === 0 ? 0 : Math.min(4, 1 + Math.floor((n / max) * 3.999));
      grid.push(el("span", {
        class: `cell l${level}`, "data-heatmap-cell": `${d}-${h}`, "data-count": n,
        title: `${DAYS[d]} ${h}:00 – ${n} messages`,
      }));
    });
  });
  $("heatmap").replaceChildren(...grid);
}

$("sess-prev").addEventListener("click", () => { stats.page--; renderStats(); });
$("sess-next").addEventListener("click", () => { stats.page++; renderStats(); });

// ---- Users (admin) -------------------------------------------------------------------------

let shownUser = null;

$("search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("q").value.trim();
  const msg = $("search-message");
  msg.hidden = true;
  $("results").replaceChildren();
  try {
    const r = await api(`/api/users/search?q=${encodeURIComponent(q)}&limit=20`);
    $("results").replaceChildren(...r.users.map((u) => el("li", {},
      el("button", { type: "button", class: "link", onclick: () => openUser(u.userId, u.name) },
        u.name || u.userId),
      el("span", { class: "muted" }, ` ${u.userId} · ${u.presence.status}`))));
    if (r.users.length === 0) {
      msg.hidden = false;
      msg.textContent = "No user by that name.";
    }
  } catch (e) {
    msg.hidden = false;
    msg.textContent = `Search: ${e.message}`;
  }
  // A user id typed as is, whether or not a name matches (search needs a database; ids do not).
  if (q) $("results").append(el("li", {},
    el("button", { type: "button", class: "link", onclick: () => openUser(q) }, `Open user id “${q}”`)));
});

async function openUser(id, name) {
  shownUser = { id, name };
  $("user").hidden = false;
  $("user-message").textContent = "";
  $("user-title").textContent = name ? `${name} (${id})` : id;
  $("user").setAttribute("aria-busy", "true");
  try {
    const r = await api(`/api/admin/users/${encodeURIComponent(id)}`);
    const blocks = await api(`/api/users/${encodeURIComponent(id)}/blocks`).catch(() => null);
    const p = r.presence;
    const facts = [["Status", p.status], ["Online", p.online ? "yes" : "no"], ["Gender", p.gender],
      ["Last seen", p.online ? "now" : when(p.lastSeen)], ["Updated", when(p.updatedAt)], ["Version", p.version],
      // Section 11: what the user chose; operators see the truth above.
      ["Invisible", r.privacy?.invisible ? "yes (others see them offline)" : "no"],
      ["Last seen shown to", r.privacy?.lastSeen === "nobody" ? "nobody" : "everyone"],
      ["Blocked", blocks ? (blocks.blocked.length ? blocks.blocked.join(", ") : "nobody") : "–"]];
    $("user-presence").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    fill($("connections").querySelector("tbody"), r.connections.map((c) => [
      c.id, c.node, c.namespace, c.transport || "–", when(c.connectedAt), ago(c.lastHeardAt)]));
    $("user-disconnect").disabled = r.connections.length === 0;
  } catch (e) {
    $("user-presence").replaceChildren();
    fill($("connections").querySelector("tbody"), []);
    $("user-disconnect").disabled = true;
    $("user-message").textContent = e.status === 404 ? "Never seen." : e.message;
  } finally {
    $("user").setAttribute("aria-busy", "false");
  }
}

$("user-refresh").addEventListener("click", () => shownUser && openUser(shownUser.id, shownUser.name));
$("user-disconnect").addEventListener("click", async () => {
  if (!shownUser) return;
  const { id, name } = shownUser;
  try {
    const r = await api(`/api/admin/users/${encodeURIComponent(id)}/disconnect`, { method: "POST" });
    await openUser(id, name);
    $("user-message").textContent = `Disconnected ${r.connections} connection(s).`;
  } catch (e) {
    $("user-message").textContent = `Disconnect failed: ${e.message}`;
  }
});

// ---- start -----------------------------------------------------------------------------------

const kept = sessionStorage.getItem(TOKEN_KEY);
if (kept) {
  signIn(kept).catch(() => signOut("Sign in again."));
} else {
  show();
}
