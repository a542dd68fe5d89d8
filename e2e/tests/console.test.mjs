// The web console (section 10) in a real headless Chromium (Debian's, driven by
// puppeteer-core): it loads with no console error or failed request, signs in and refuses a
// bad token, follows a socket.io-client user coming and going, shows the statistics /api/stats
// gives after a widget message without a second loading state, finds and disconnects a user,
// and renders names typed by strangers as text. Screenshots of every view at desktop and
// phone width go to target/console-screenshots (UPDATE_SCREENSHOTS=1: also docs/console).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { io } from "socket.io-client";
import { startGateway, token, user, waitUntil, withDeadline } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";
import { startReceiver } from "../webhook-receiver.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(here, "..", "..", "target", "console-screenshots");
const DOCS = path.join(here, "..", "..", "docs", "console");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const HOSTILE = "<img src=x onerror=alert(1)>";

const admin = token({ sub: "ops", roles: ["admin"] });
const dash = token({ sub: "viewer-desk", roles: ["dashboard"] });

let gw;
let browser;

before(async () => {
  const url = freshDatabase();
  gw = await startGateway({ DATABASE_URL: url, ADMIN_TOKEN: "console-admin-token-0123456789" });
  await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
  psql(url, `INSERT INTO users (id, name, gender) VALUES
    ('u-hostile', '${HOSTILE} Hostile', 'female'), ('u-anna', 'Anna Console', 'female')`);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  fs.mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

/** A fresh tab on the console that records what went wrong in it, and every time an element
 * became busy (aria-busy="true"). */
async function openConsole({ width = 1280, height = 860, url = gw.url } = {}) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width, height });
  const problems = [];
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()}: ${r.url()}`));
  page.on("dialog", (d) => (problems.push(`dialog: ${d.message()}`), d.dismiss()));
  await page.evaluateOnNewDocument(() => {
    window.__busy = [];
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.target.getAttribute("aria-busy") === "true") window.__busy.push(r.target.id);
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["aria-busy"] });
  });
  await page.goto(`${url}/`, { waitUntil: "networkidle0" });
  return { page, problems, close: () => context.close() };
}

async function signIn(page, t) {
  await page.locator("input[type=password]").fill(t);
  await page.keyboard.press("Enter");
}

const text = (page, sel) => page.$eval(sel, (e) => e.textContent.trim());
const waitText = (page, sel, want, ms = 2000) =>
  page.waitForFunction((s, w) => document.querySelector(s)?.textContent.trim() === String(w), { timeout: ms }, sel, want);
const clickLink = (page, label) => page.locator(`::-p-text(${label})`).click();

async function shoot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.UPDATE_SCREENSHOTS === "1") {
    fs.mkdirSync(DOCS, { recursive: true });
    fs.copyFileSync(file, path.join(DOCS, `${name}.png`));
  }
}

function widget(visitorId, name) {
  const s = io(`${gw.url}/widget`, {
    auth: { visitorId, channel: "web", name, country: "TR", city: HOSTILE },
    reconnection: false, forceNew: true, transports: ["websocket"],
  });
  return withDeadline(new Promise((res, rej) => (s.once("connect", () => res(s)), s.once("connect_error", rej))), 5000, "widget");
}

test("GET / redirects to the console, served with a strict CSP and nothing from elsewhere", async () => {
  const r = await fetch(`${gw.url}/`, { redirect: "manual" });
  assert.equal(r.status, 302);
  assert.equal(r.headers.get("location"), "/ui/");
  const page = await fetch(`${gw.url}/ui/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-security-policy"), /default-src 'self'/);
  assert.doesNotMatch(page.headers.get("content-security-policy"), /unsafe/);
  const html = await page.text();
  assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, "no other origin");
  assert.equal((await fetch(`${gw.url}/ui/nope.js`)).status, 404);
});

test("sign-in: a wrong token is refused and says so; the token lives in sessionStorage only", async () => {
  const { page, close } = await openConsole();
  try {
    await signIn(page, "not-a-token");
    await waitText(page, "#signin-error", "Wrong token: unauthorized: invalid token", 5000).catch(async () => {
      // The exact wording is the gateway's; what matters is that it says the token is wrong.
      assert.match(await text(page, "#signin-error"), /^Wrong token/);
    });
    assert.equal(await page.$eval("#nav", (e) => e.hidden), true);
    await signIn(page, token({ sub: "just-a-user", roles: ["user"] }));
    await page.waitForFunction(() => /neither the dashboard nor the admin/.test(document.querySelector("#signin-error").textContent), { timeout: 3000 });
    await signIn(page, admin);
    await page.waitForSelector("#nav:not([hidden])", { timeout: 5000 });
    assert.equal(await page.evaluate(() => sessionStorage.getItem("presence-console-token")), admin);
    assert.ok(!page.url().includes(admin), "never in the URL");
    assert.ok(!gw.output().includes(admin), "never in the gateway's log");
    // A reload keeps the session (same tab); a new tab does not have it.
    await page.reload({ waitUntil: "networkidle0" });
    await page.waitForSelector("#nav:not([hidden])", { timeout: 5000 });
  } finally {
    await close();
  }
});

test("overview: the online count follows a user connecting and leaving within 2 s", async () => {
  const { page, problems, close } = await openConsole();
  try {
    await signIn(page, admin);
    await page.waitForSelector("#overview[aria-busy=false]", { timeout: 5000 });
    await waitText(page, "#conn", "live");
    const before = Number(await text(page, "#ov-online"));
    const s = await gw.connect(user("console-visitor", "female"));
    await waitText(page, "#ov-online", before + 1, 2000);
    await page.waitForFunction(() => document.querySelectorAll("#replicas tbody tr").length === 1, { timeout: 5000 });
    await shoot(page, "overview-desktop");
    s.disconnect();
    await waitText(page, "#ov-online", before, 2000);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test("statistics: a widget message shows the numbers /api/stats gives, loading shown once; hostile names are text", async () => {
  const { page, problems, close } = await openConsole();
  try {
    // The heatmap is in the browser's time zone, whatever the server's.
    await page.emulateTimezone("Asia/Tokyo");
    await page.reload({ waitUntil: "networkidle0" });
    await signIn(page, admin);
    await page.waitForSelector("#nav:not([hidden])");
    const reports = [];
    page.on("request", (r) => r.url().includes("/api/stats") && reports.push(Date.now()));
    await clickLink(page, "Statistics");
    await page.waitForSelector("#statistics[aria-busy=false]", { timeout: 5000 });
    assert.equal(await page.$$eval("[data-heatmap-cell]", (c) => c.length), 7 * 24);
    assert.equal(await text(page, "#st-tz"), "(Asia/Tokyo)");
    const w = await widget("W-hostile-1", HOSTILE);
    let seq = 0;
    const burstStart = Date.now();
    // A burst of 30 messages: refetched as they come, but coalesced, not once per event.
    for (let i = 0; i < 30; i++) seq = (await w.timeout(5000).emitWithAck("widget:message", { text: `m${i}`, humanMode: false })).seq;
    const want = (await gw.http("/api/stats", { token: dash })).json;
    assert.ok(want.lastEventSeq >= seq);
    await waitText(page, "#st-seq", want.lastEventSeq, 3000);
    const during = reports.filter((t) => t >= burstStart).length;
    const allowed = Math.ceil((Date.now() - burstStart) / 250) + 2;
    assert.ok(during <= allowed && during < 30, `${during} refetches for 30 events (at most ${allowed})`);
    // The cell of the burst's hour in Tokyo (two cells if the burst crossed an hour).
    const cellAt = (t) => {
      const parts = new Intl.DateTimeFormat("en-US", { timeZone: "Asia/Tokyo", weekday: "short", hour: "numeric", hourCycle: "h23" }).formatToParts(t);
      const day = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"].indexOf(parts.find((p) => p.type === "weekday").value);
      return `${day}-${Number(parts.find((p) => p.type === "hour").value)}`;
    };
    let count = 0;
    for (const cell of new Set([cellAt(new Date(burstStart)), cellAt(new Date())])) {
      count += await page.$eval(`[data-heatmap-cell="${cell}"]`, (c) => Number(c.dataset.count));
    }
    assert.ok(count >= 30, `the burst's hour in Tokyo holds it: ${count}`);
    assert.equal(await text(page, "#st-totalMessages"), String(want.totalMessages));
    assert.equal(await text(page, "#st-totalSessions"), String(want.totalSessions));
    assert.equal(await text(page, "#st-webUniqueUsers"), String(want.webUniqueUsers));
    assert.equal(await text(page, "#st-onlineWeb"), String(want.online.web));
    const busy = await page.evaluate(() => window.__busy.filter((id) => id === "statistics").length);
    assert.ok(busy <= 1, `statistics showed its loading state ${busy} times`);
    // The visitor's name and city, typed by a stranger, are shown as typed and run nothing.
    const cells = await page.$$eval("#sessions td", (tds) => tds.map((t) => t.textContent));
    assert.ok(cells.includes(HOSTILE), JSON.stringify(cells));
    assert.equal(await page.$$eval("main img", (i) => i.length), 0);
    await shoot(page, "statistics-desktop");
    w.disconnect();
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test("users: search finds a user, hostile names are text, disconnect sends the client away and the count drops", async () => {
  const { page, problems, close } = await openConsole();
  try {
    await signIn(page, admin);
    await page.waitForSelector("#nav:not([hidden])");
    const target = gw.socket(user("u-hostile", "female"), { transports: ["websocket"] });
    await withDeadline(new Promise((r) => target.once("connect", r)), 5000, "target connects");
    // Invisible (section 11): operators still count and see them online, and see the setting.
    await target.timeout(5000).emitWithAck("presence:set-privacy", { invisible: true });
    await target.timeout(5000).emitWithAck("presence:block", { userId: "u-pest" });
    const gone = new Promise((r) => target.once("disconnect", r));
    await waitUntil(async () => Number(await text(page, "#ov-online")) >= 1, 3000, "online on the overview");
    const online = Number(await text(page, "#ov-online"));
    await clickLink(page, "Users");
    await page.locator("#q").fill("hostile");
    await page.keyboard.press("Enter");
    await page.waitForFunction((h) => [...document.querySelectorAll("#results button")].some((b) => b.textContent === `${h} Hostile`), { timeout: 3000 }, HOSTILE);
    assert.equal(await page.$$eval("main img", (i) => i.length), 0);
    await page.locator(`::-p-text(${HOSTILE} Hostile)`).click();
    await page.waitForFunction(() => document.querySelectorAll("#connections tbody tr").length === 1, { timeout: 3000 });
    assert.equal(await text(page, "#user-title"), `${HOSTILE} Hostile (u-hostile)`);
    const facts = await page.$eval("#user-presence", (e) => e.textContent);
    assert.match(facts, /OnlineyesGender/, "the truth: online");
    assert.match(facts, /Invisibleyes \(others see them offline\)/);
    assert.match(facts, /Blockedu-pest/);
    await shoot(page, "users-desktop");
    await page.locator("#user-disconnect").click();
    assert.equal(await withDeadline(gone, 3000, "the client sent away"), "io server disconnect");
    await page.waitForFunction(() => /Disconnected 1 connection/.test(document.querySelector("#user-message").textContent), { timeout: 3000 });
    await clickLink(page, "Overview");
    await waitText(page, "#ov-online", online - 1, 2000);
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
});

test("the connection indicator shows reconnecting while the gateway is away, and recovers by itself", async () => {
  const own = await startGateway({});
  let again;
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    await page.goto(`${own.url}/ui/`, { waitUntil: "networkidle0" });
    await signIn(page, dash);
    await waitText(page, "#conn", "live", 5000);
    own.proc.kill("SIGKILL");
    await own.exited;
    await page.waitForFunction(() => document.querySelector("#conn").dataset.state === "reconnecting", { timeout: 5000 });
    again = await startGateway({ PORT: String(own.port) });
    await waitText(page, "#conn", "live", 10000);
    await page.waitForSelector("#nav:not([hidden])");
  } finally {
    await context.close();
    await again?.stop();
  }
});

test("a dashboard token sees Overview and Statistics, no Users; phone-width screenshots", async () => {
  const { page, problems, close } = await openConsole({ width: 390, height: 844 });
  try {
    await shoot(page, "signin-phone");
    await signIn(page, dash);
    await page.waitForSelector("#overview[aria-busy=false]", { timeout: 5000 });
    assert.equal(await page.$eval("#nav-users", (e) => e.hidden), true);
    await page.goto(`${gw.url}/ui/#users`);
    await page.waitForSelector("#overview:not([hidden])", { timeout: 5000 });
    assert.equal(await page.$eval("#users", (e) => e.hidden), true);
    await shoot(page, "overview-phone");
    await clickLink(page, "Statistics");
    await page.waitForSelector("#statistics[aria-busy=false]", { timeout: 5000 });
    await shoot(page, "statistics-phone");
    // No horizontal scrolling of the page itself at phone width (wide tables scroll inside).
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1));
    assert.deepEqual(problems, []);
  } finally {
    await close();
  }
  const desk = await openConsole({ width: 390, height: 844 });
  try {
    await signIn(desk.page, admin);
    await desk.page.waitForSelector("#nav:not([hidden])");
    await clickLink(desk.page, "Users");
    await desk.page.locator("#q").fill("anna");
    await desk.page.keyboard.press("Enter");
    await desk.page.waitForFunction(() => document.querySelectorAll("#results li").length >= 2, { timeout: 3000 });
    await shoot(desk.page, "users-phone");
  } finally {
    await desk.close();
  }
});

test("overview: the webhook queue and the last delivery error, while the backend fails", async () => {
  const r = await startReceiver();
  r.answer = 503;
  const g = await startGateway({ WEBHOOK_URL: r.url, WEBHOOK_SECRET: "w".repeat(32), WEBHOOK_OFFLINE_DELAY_MS: "0" });
  const { page, problems, close } = await openConsole({ url: g.url });
  try {
    await signIn(page, admin);
    const s = await g.connect(user("console-webhook", "female"));
    await page.waitForFunction(
      () => !document.querySelector("#ov-webhooks").hidden && /HTTP 503/.test(document.querySelector("#ov-wh-error").textContent),
      { timeout: 8000 },
    );
    assert.ok(Number(await text(page, "#ov-wh-queue")) >= 1, "the unsent online waits");
    r.answer = 200;
    await page.waitForFunction(() => document.querySelector("#ov-wh-queue").textContent.trim() === "0", { timeout: 8000 });
    s.disconnect();
    assert.deepEqual(problems, []);
  } finally {
    await close();
    await g.stop();
    await r.close();
  }
});

