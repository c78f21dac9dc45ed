// mqtt-guard dashboard: plain JavaScript over the admin API (docs/dashboard.md, docs/admin-api.md).
// No framework, no build step, nothing loaded from another origin. Every view is an entry of VIEWS
// (name -> {title, nav, render}); a new page (plans, usage) is one more entry. Data only ever reaches
// the page through textContent, never as HTML.
"use strict";

const state = { me: null, csrf: null, timers: [], streams: [] };

// -- helpers -----------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

const fmt = {
  num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); },
  rate(n) { return n === null || n === undefined ? "–" : (n >= 100 ? n.toFixed(0) : n.toFixed(1)); },
  time(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–"; },
  ago(t) {
    if (!t) return "–";
    const s = Math.max(0, Date.now() / 1000 - t);
    if (s < 90) return `${s.toFixed(0)} s`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  },
  bytes(n) {
    if (n === null || n === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${u[i]}`;
  },
};

function say(text, bad) {
  const box = document.getElementById("status");
  const msg = h("div", { class: bad ? "msg bad" : "msg", role: bad ? "alert" : "status" }, text);
  box.append(msg);
  setTimeout(() => msg.remove(), bad ? 8000 : 3000);
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// Every request goes with the session cookie (same origin); the ones that change something carry the
// CSRF token the login returned (the server refuses them without it).
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401 && path !== "/api/session") {
    state.me = null;
    go("login");
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function enc(s) { return encodeURIComponent(s); }

// Run `fn` now and every `seconds` (until the view changes); returns it, to run it again at once. A
// failed round (the server restarting, Redis away: 503) is shown once and retried at the next tick.
function every(seconds, fn) {
  const run = () => Promise.resolve().then(fn).then(() => offline(false), (e) => {
    if (e instanceof ApiError && e.status === 401) return;
    offline(e instanceof ApiError ? e.message : "cannot reach the admin server");
  });
  run();
  state.timers.push(setInterval(run, seconds * 1000));
  return run;
}

function offline(text) {
  let box = document.getElementById("offline");
  if (!text) { if (box) box.remove(); return; }
  if (!box) {
    box = h("div", { id: "offline", class: "msg bad", role: "alert" });
    document.getElementById("status").append(box);
  }
  box.textContent = `${text} (retrying)`;
}

function stopAll() {
  for (const t of state.timers) clearInterval(t);
  for (const s of state.streams) s.close();
  state.timers = [];
  state.streams = [];
}

function writeButton(label, onclick, cls) {
  const ro = state.me && state.me.read_only;
  return h("button", {
    type: "button", class: cls, onclick, disabled: ro,
    title: ro ? "read-only token" : null,
  }, label);
}

function table(columns, rows, opts) {
  opts = opts || {};
  const head = h("tr", {}, columns.map((c) => {
    const sortable = opts.sort && c.sort;
    const th = h("th", {
      class: [c.num ? "num" : "", sortable ? "sortable" : "", sortable && opts.sort.by === c.sort ? "sorted" : ""].join(" "),
      "data-sort": sortable ? c.sort : null,
      onclick: sortable ? () => opts.sort.set(c.sort) : null,
    }, c.label, sortable && opts.sort.by === c.sort ? (opts.sort.order === "desc" ? " ▼" : " ▲") : "");
    return th;
  }));
  const body = h("tbody", {}, rows.map((r) => h("tr", {
    class: opts.link ? "link" : null,
    "data-key": opts.key ? opts.key(r) : null,
    onclick: opts.link ? () => opts.link(r) : null,
  }, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.get(r))))));
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, opts.empty || "nothing yet")));
  return h("table", { id: opts.id }, h("thead", {}, head), body);
}

// Per-second rates of buckets of `step` s starting at `start`; the newest bucket is still filling, so it
// is divided by the seconds it has run so far (`now`), not by the whole step.
function perSecond(values, start, step, now) {
  const n = values.length;
  return values.map((v, i) => {
    if (i < n - 1 || !now) return v / step;
    const ran = now - (start + i * step);
    return ran >= 2 ? v / Math.min(step, ran) : (n > 1 ? values[n - 2] / step : 0);
  });
}

// A line chart of per-second rates: series [{name, cls, values (per bucket)}], one bucket = `step` s.
function chart(series, start, step, title, now) {
  const W = 1200, H = 240, L = 48, B = 22, T = 8, R = 12;
  const n = Math.max(...series.map((s) => s.values.length), 1);
  const perSec = series.map((s) => perSecond(s.values, start, step, now));
  const max = Math.max(1, ...perSec.flat());
  const x = (i) => L + (W - L - R) * (n <= 1 ? 0 : i / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    g.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6eb" }));
    g.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" }, fmt.rate(v)));
  }
  for (let k = 0; k <= 6; k++) {
    const i = Math.round(((n - 1) * k) / 6);
    const t = new Date((start + i * step) * 1000).toISOString().slice(11, 16);
    const anchor = k === 0 ? "start" : k === 6 ? "end" : "middle";
    g.append(svg("text", { x: x(i), y: H - 6, "text-anchor": anchor, "font-size": 11, fill: "#667085" }, t));
  }
  const colors = { in: "#2563eb", out: "#16a34a" };
  perSec.forEach((vals, j) => {
    const pts = vals.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    g.append(svg("polyline", { points: pts, fill: "none", stroke: series[j].color || colors[series[j].cls] || "#444", "stroke-width": 2 }));
  });
  const legend = h("div", { class: "legend" }, series.map((s) => {
    const item = h("span", { class: s.cls }, s.name);
    if (s.color) item.style.color = s.color;
    return item;
  }));
  return h("div", { class: "chart" }, legend, g);
}

function current(values, start, step, now) {
  const rates = perSecond(values, start, step, now);
  return rates.length ? rates[rates.length - 1] : 0;
}

// milliseconds, flagged past a warning and a bad threshold
function ms(v, warn, bad) {
  if (v === null || v === undefined) return "–";
  const text = `${v < 10 ? v.toFixed(1) : v.toFixed(0)} ms`;
  return v >= bad ? h("span", { class: "pill bad" }, text) : v >= warn ? h("span", { class: "pill warn" }, text) : text;
}

function reasons(obj) {
  return Object.entries(obj || {}).filter(([, v]) => v).map(([k, v]) => ({ reason: k, count: v }));
}

// -- views -------------------------------------------------------------------------------------------
const VIEWS = {};

VIEWS.login = {
  title: "Log in",
  render(main) {
    document.getElementById("top").hidden = true;
    const input = h("input", { id: "login-token", type: "password", autocomplete: "off", placeholder: "mqga_…", required: true });
    const err = h("p", { id: "login-error", class: "muted", role: "alert" });
    const form = h("form", {
      id: "login-form",
      async onsubmit(ev) {
        ev.preventDefault();
        try {
          const me = await api("POST", "/api/session", { token: input.value });
          state.me = me;
          state.csrf = me.csrf;
          input.value = "";
          go("overview");
        } catch (e) {
          err.textContent = e.status === 401 ? "Unknown or revoked token." : e.message;
        }
      },
    },
    h("h1", {}, "mqtt-guard"),
    h("p", { class: "muted" }, "Log in with an admin token (", h("code", {}, "mqtt-guard admin token create NAME"), "). It is exchanged once for a session cookie."),
    h("div", { class: "row" }, input),
    h("div", { class: "row" }, h("button", { id: "login-submit", type: "submit" }, "Log in")),
    err);
    main.append(h("div", { class: "panel login" }, form));
    input.focus();
  },
};

VIEWS.overview = {
  title: "Overview", nav: true,
  render(main) {
    const cards = h("div", { class: "grid", id: "overview-cards" });
    const chartBox = h("div", { class: "panel", id: "overview-chart" }, h("h2", {}, "Messages per second, last hour"));
    const errors = h("div", { class: "panel", id: "overview-errors" });
    const brokers = h("div", { class: "panel", id: "overview-brokers" });
    main.append(h("h1", {}, "Overview"), cards, chartBox, brokers, errors);
    every(5, async () => {
      const [o, b] = await Promise.all([api("GET", "/api/overview"), api("GET", "/api/brokers")]);
      const step = o.rate.resolution_seconds;
      const connected = b.brokers.filter((x) => x.registered).reduce((a, x) => a + x.sessions, 0);
      const alive = b.brokers.filter((x) => x.alive).length;
      const redis = b.redis;
      const card = (id, label, value, sub, cls) => h("div", { class: "panel card", id },
        h("div", { class: "label" }, label), h("div", { class: "value " + (cls || "") }, value), h("div", { class: "sub" }, sub));
      cards.replaceChildren(
        card("card-connected", "Connected clients", fmt.num(connected), `${alive} broker${alive === 1 ? "" : "s"} alive`),
        card("card-in", "Messages in / s", fmt.rate(current(o.rate.messages_in, o.rate.start, step, o.time)), `${fmt.num(o.counters.messages_in)} in total`),
        card("card-out", "Messages out / s", fmt.rate(current(o.rate.messages_out, o.rate.start, step, o.time)), `${fmt.num(o.counters.messages_out)} in total`),
        card("card-redis", "Redis", redis.reachable ? `${redis.rtt_ms.toFixed(1)} ms` : "unreachable",
          redis.reachable ? "round trip from the admin server" : "the API answers 503", redis.reachable ? "" : "bad"),
      );
      chartBox.replaceChildren(h("h2", {}, "Messages per second, last hour"),
        chart([{ name: "in", cls: "in", values: o.rate.messages_in }, { name: "out", cls: "out", values: o.rate.messages_out }],
          o.rate.start, step, "messages per second", o.time));
      brokers.replaceChildren(h("h2", {}, "Brokers"), table([
        { label: "broker", get: (r) => r.stats_id || r.id },
        { label: "state", get: (r) => h("span", { class: "pill " + (r.alive ? "ok" : "bad") }, r.alive ? "alive" : (r.registered ? "dead" : "stopped")) },
        { label: "clients", num: true, get: (r) => fmt.num(r.registered ? r.sessions : null) },
        { label: "heartbeat", num: true, get: (r) => r.stats_heartbeat_age === null ? "–" : `${r.stats_heartbeat_age.toFixed(1)} s ago` },
        { label: "loop lag", num: true, get: (r) => ms(r.health.loop_lag_ms, 50, 200) },
        { label: "max lag", num: true, get: (r) => ms(r.health.loop_lag_max_ms, 200, 1000) },
        { label: "Redis", num: true, get: (r) => ms(r.health.redis_rtt_ms, 10, 100) },
        { label: "flush errors", num: true, get: (r) => (r.health.flush_failures ? h("span", { class: "pill bad" }, fmt.num(r.health.flush_failures)) : fmt.num(r.health.flush_failures)) },
        { label: "host", get: (r) => `${r.host || "?"}${r.pid ? " pid " + r.pid : ""}` },
      ], b.brokers, { id: "brokers-table", empty: "no broker has registered" }));
      const errs = [
        ...reasons(o.publish_errors).map((r) => ({ ...r, kind: "publish" })),
        ...reasons(o.auth_failures).map((r) => ({ ...r, kind: "connect refused" })),
        ...reasons(o.kicks).map((r) => ({ ...r, kind: "kicked" })),
      ];
      errors.replaceChildren(h("h2", {}, "Errors by reason"), table([
        { label: "what", get: (r) => r.kind },
        { label: "reason", get: (r) => r.reason },
        { label: "count", num: true, get: (r) => fmt.num(r.count) },
      ], errs, { id: "errors-table", empty: "no errors" }));
    });
  },
};

const SESSION_COLUMNS = [
  { label: "client id", sort: "client_id", get: (r) => r.client_id },
  { label: "user", sort: "username", get: (r) => r.username || "(anonymous)" },
  { label: "broker", sort: "broker", get: (r) => r.broker },
  { label: "connected", sort: "since", get: (r) => fmt.ago(r.since) },
  // the rates sort on the server too, over every client's rate from the analytics (rate_in, rate_out)
  { label: "in / s", sort: "rate_in", num: true, get: (r) => fmt.rate(r.rate_in) },
  { label: "out / s", sort: "rate_out", num: true, get: (r) => fmt.rate(r.rate_out) },
  { label: "msgs in", num: true, get: (r) => fmt.num(r.messages_in) },
  { label: "msgs out", num: true, get: (r) => fmt.num(r.messages_out) },
  { label: "errors", num: true, get: (r) => (r.publish_errors ? h("span", { class: "pill bad" }, fmt.num(r.publish_errors)) : "0") },
  { label: "queue", sort: "queue_messages", num: true, get: (r) => fmt.num(r.queue_messages) },
  // the session's counts against its quota (kept while the user has limits): sortable on the server
  { label: "quota events in", sort: "events_in", num: true, get: (r) => fmt.num(r.events_in) },
];

VIEWS.clients = {
  title: "Clients", nav: true,
  render(main, params) {
    // sorting, paging and filtering happen on the server; the page of rows arrives as server-sent events
    const q = { sort: params.sort || "since", order: params.order || "desc", offset: Number(params.offset || 0), limit: 50, username: params.username || "" };
    const live = h("span", { class: "live off", id: "clients-live" }, "connecting");
    const box = h("div", { id: "clients-box" });
    const pager = h("div", { class: "pager" });
    const filter = h("input", { id: "clients-filter", placeholder: "username", value: q.username });
    filter.addEventListener("change", () => { q.username = filter.value.trim(); q.offset = 0; open(); });
    main.append(h("h1", {}, "Clients"), h("div", { class: "panel" },
      h("div", { class: "row" }, "Only user ", filter, live), box, pager));
    let stream = null;
    const sort = { by: q.sort, order: q.order, set(col) {
      if (q.sort === col) q.order = q.order === "asc" ? "desc" : "asc"; else { q.sort = col; q.order = "asc"; }
      q.offset = 0; open();
    } };
    function draw(page) {
      sort.by = page.sort; sort.order = page.order;
      box.replaceChildren(table(SESSION_COLUMNS, page.items, {
        id: "clients-table", sort, key: (r) => r.client_id, empty: "no client is connected",
        link: (r) => go("client", { id: r.client_id }),
      }));
      const last = Math.min(page.total, page.offset + page.items.length);
      pager.replaceChildren(
        h("button", { type: "button", class: "quiet", disabled: page.offset === 0, onclick() { q.offset = Math.max(0, q.offset - q.limit); open(); } }, "‹ previous"),
        h("span", { id: "clients-count" }, `${page.total ? page.offset + 1 : 0}–${last} of ${fmt.num(page.total)}`),
        h("button", { type: "button", class: "quiet", disabled: last >= page.total, onclick() { q.offset += q.limit; open(); } }, "next ›"),
      );
    }
    function open() {
      if (stream) { stream.close(); state.streams = state.streams.filter((s) => s !== stream); }
      const args = new URLSearchParams({ sort: q.sort, order: q.order, offset: q.offset, limit: q.limit, interval: 1 });
      if (q.username) args.set("username", q.username);
      stream = new EventSource("/api/stream/sessions?" + args.toString());
      state.streams.push(stream);
      stream.addEventListener("sessions", (ev) => {
        live.className = "live"; live.textContent = "live";
        draw(JSON.parse(ev.data));
      });
      stream.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
    }
    open();
  },
};

function quotaBars(quota) {
  if (!quota || !quota.metrics || !Object.keys(quota.metrics).length) return h("p", { class: "muted" }, "no limits apply");
  return table([
    { label: "limit", get: (r) => r.name },
    { label: "use", get: (r) => {
      const pct = r.limit ? Math.min(100, (100 * r.used) / r.limit) : 0;
      const bar = h("div", { class: "bar " + (pct >= 100 ? "bad" : pct >= 80 ? "warn" : "") }, h("div", {}));
      bar.firstChild.style.width = `${pct}%`;
      return bar;
    } },
    { label: "used", num: true, get: (r) => `${fmt.num(r.used)} / ${fmt.num(r.limit)}` },
    { label: "window", get: (r) => r.window },
    { label: "resets in", num: true, get: (r) => (r.resets_in === null ? "–" : `${Math.round(r.resets_in)} s`) },
    { label: "refused", num: true, get: (r) => fmt.num(r.refused) },
  ], Object.entries(quota.metrics).map(([name, m]) => ({ name, ...m })), { id: "quota-table" });
}

VIEWS.client = {
  title: "Client",
  render(main, params) {
    const id = params.id;
    const head = h("div", { class: "panel", id: "client-session" });
    const rate = h("div", { class: "panel", id: "client-rate" });
    const quota = h("div", { class: "panel", id: "client-quota" });
    const errs = h("div", { class: "panel", id: "client-errors" });
    const reason = h("input", { id: "kick-reason", placeholder: "reason (audited)" });
    const block = h("input", { id: "kick-block", type: "number", min: 0, value: 0, size: 5 });
    const kick = writeButton("Kick", async () => {
      if (!window.confirm(`Disconnect ${id}?`)) return;
      try {
        await api("POST", `/api/clients/${enc(id)}/kick`, { reason: reason.value || "kicked from the dashboard", block_seconds: Number(block.value || 0) });
        say(`${id} kicked`);
        setTimeout(refresh, 500); // the broker has closed it by then
      } catch (e) { say(e.message, true); }
    }, "danger");
    kick.id = "kick-button";
    const drop = writeButton("Drop session", async () => {
      if (!window.confirm(`Discard the session of ${id} (its subscriptions and queued messages)?`)) return;
      try {
        const r = await api("DELETE", `/api/sessions/${enc(id)}?reason=${enc(reason.value || "dropped from the dashboard")}`);
        say(`drop of ${id} sent to ${r.brokers} broker(s)`);
        setTimeout(refresh, 500);
      } catch (e) { say(e.message, true); }
    }, "quiet");
    drop.id = "drop-button";
    main.append(h("h1", {}, "Client ", h("code", { id: "client-id" }, id)), head,
      h("div", { class: "panel" }, h("h2", {}, "Kick or drop"), h("div", { class: "row" }, reason, "block reconnects for", block, "s", kick, drop)),
      rate, h("div", { class: "cols" }, quota, errs));
    const refresh = every(3, async () => {
      let session = null;
      let stats = null;
      try { session = await api("GET", `/api/sessions/${enc(id)}`); } catch (e) { if (e.status !== 404) throw e; }
      try { stats = await api("GET", `/api/clients/${enc(id)}/stats`); } catch (e) { if (e.status !== 404) throw e; }
      head.replaceChildren(h("h2", {}, "Session"), session
        ? h("div", { class: "row", id: "client-state" }, h("span", { class: "pill ok" }, "connected"), [
          `user ${session.username || "(anonymous)"}`, `broker ${session.broker}`,
          `since ${fmt.time(session.since)} (${fmt.ago(session.since)})`, `queue ${fmt.num(session.queue_messages)} messages`,
        ].join("  ·  "))
        : h("div", { class: "row", id: "client-state" }, h("span", { class: "pill bad" }, "not connected"),
          stats && stats.disconnected_at ? `left ${fmt.time(stats.disconnected_at)}` : ""));
      if (!stats) {
        rate.replaceChildren(h("h2", {}, "Rate"), h("p", { class: "muted" }, "no stats yet (the brokers flush every few seconds)"));
        return;
      }
      rate.replaceChildren(h("h2", {}, "Messages per second, last hour"),
        chart([{ name: "in", cls: "in", values: stats.rate.messages_in }, { name: "out", cls: "out", values: stats.rate.messages_out }],
          stats.rate.start, stats.rate.resolution_seconds, "the client's messages per second", Date.now() / 1000),
        h("p", { class: "muted", id: "client-counters" }, `${fmt.num(stats.counters.messages_in || 0)} messages in, ${fmt.num(stats.counters.messages_out || 0)} out, ${fmt.bytes(stats.counters.bytes_in || 0)} in`));
      quota.replaceChildren(h("h2", {}, "Quota use"), quotaBars(stats.quota));
      const rows = [
        ...reasons(stats.publish_errors).map((r) => ({ ...r, kind: "publish" })),
        ...reasons(stats.kicks).map((r) => ({ ...r, kind: "kicked" })),
        ...reasons(stats.auth_failures).map((r) => ({ ...r, kind: "connect refused" })),
      ];
      const palette = ["#dc2626", "#d97706", "#7c3aed", "#0891b2"];
      const history = Object.entries(stats.errors_history || {}).map(([reason, values], i) => ({ name: reason, values, color: palette[i % palette.length] }));
      errs.replaceChildren(h("h2", {}, "Errors"), table([
        { label: "what", get: (r) => r.kind }, { label: "reason", get: (r) => r.reason }, { label: "count", num: true, get: (r) => fmt.num(r.count) },
      ], rows, { id: "client-errors-table", empty: "no errors" }),
      history.length ? h("div", { id: "client-errors-chart" }, h("h2", {}, "Publish errors per second, last hour"),
        chart(history, stats.rate.start, stats.rate.resolution_seconds, "publish errors per second", Date.now() / 1000)) : null);
    });
  },
};

// A select of the plans that exist, and "none" (a user or a group off any plan).
function planSelect(id, plans, current) {
  return h("select", { id }, ["none", ...Object.keys(plans).sort()].map((p) =>
    h("option", { value: p, selected: (current || "none") === p }, p)));
}

VIEWS.users = {
  title: "Users & ACL", nav: true,
  render(main, params) {
    // the users (a click opens one: its groups, plan and password), the groups and their plans, the ACL
    const users = h("div", { class: "panel", id: "users" });
    const editor = h("div", { class: "panel", id: "user-edit", hidden: !params.user });
    const groups = h("div", { class: "panel", id: "groups" });
    const rules = h("div", { class: "panel", id: "acl" });
    const check = h("div", { class: "panel", id: "acl-check" });
    main.append(h("h1", {}, "Users & ACL"), editor, h("div", { class: "cols" }, users, rules), groups, check);

    // paged on the server like the clients table (50 a page, by name)
    const q = { offset: Number(params.offset || 0), limit: 50 };
    async function loadUsers() {
      const page = await api("GET", `/api/users?offset=${q.offset}&limit=${q.limit}`);
      if (!page.items.length && q.offset > 0 && page.total) { q.offset = Math.max(0, page.total - q.limit); return loadUsers(); }
      const name = h("input", { id: "user-name", placeholder: "username" });
      const pw = h("input", { id: "user-password", type: "password", placeholder: "password", autocomplete: "new-password" });
      const last = Math.min(page.total, page.offset + page.items.length);
      const pager = h("div", { class: "pager", id: "users-pager" },
        h("button", { type: "button", class: "quiet", id: "users-prev", disabled: page.offset === 0, onclick() { q.offset = Math.max(0, q.offset - q.limit); loadUsers(); } }, "‹ previous"),
        h("span", { id: "users-count" }, `${page.total ? page.offset + 1 : 0}–${last} of ${fmt.num(page.total)}`),
        h("button", { type: "button", class: "quiet", id: "users-next", disabled: last >= page.total, onclick() { q.offset += q.limit; loadUsers(); } }, "next ›"),
      );
      users.replaceChildren(h("h2", {}, `Users (${fmt.num(page.total)})`), table([
        { label: "user", get: (r) => r.username },
        { label: "flags", get: (r) => [r.superuser ? "superuser" : "", r.disabled ? "disabled" : ""].filter(Boolean).join(", ") },
        { label: "groups", get: (r) => (r.groups || []).join(", ") },
        { label: "plan", get: (r) => r.plan || "–" },
        { label: "", get: (r) => h("a", { href: `#quotas?user=${enc(r.username)}`, onclick: (ev) => ev.stopPropagation() }, "quota") },
      ], page.items, { id: "users-table", key: (r) => r.username, link: (r) => go("users", q.offset ? { user: r.username, offset: q.offset } : { user: r.username }) }),
      pager,
      h("div", { class: "row" }, name, pw, writeButton("Add user", async () => {
        try { await api("POST", "/api/users", { username: name.value, password: pw.value }); say(`user ${name.value} added`); loadUsers(); } catch (e) { say(e.message, true); }
      })));
    }

    // One user: its groups (add, remove), its plan, a new password (hashed by the server as the CLI does).
    async function loadEditor() {
      const name = params.user;
      if (!name) return;
      const [user, plans] = await Promise.all([api("GET", `/api/users/${enc(name)}`), api("GET", "/api/plans")]);
      const reload = () => { loadEditor(); loadUsers(); loadGroups(); };
      const group = h("input", { id: "user-group", placeholder: "group" });
      const plan = planSelect("user-plan", plans, user.plan);
      const pw = h("input", { id: "user-new-password", type: "password", placeholder: "new password", autocomplete: "new-password" });
      const add = writeButton("Add to group", async () => {
        const g = group.value.trim();
        try { await api("PUT", `/api/groups/${enc(g)}/members/${enc(name)}`); say(`${name} added to ${g}`); reload(); } catch (e) { say(e.message, true); }
      });
      add.id = "user-group-add";
      const setPlan = writeButton("Set plan", async () => {
        try { const r = await api("PUT", `/api/users/${enc(name)}/plan`, { plan: plan.value }); say(`${name}: plan ${r.plan || "none"}`); reload(); } catch (e) { say(e.message, true); }
      });
      setPlan.id = "user-plan-set";
      const setPw = writeButton("Set password", async () => {
        try { await api("PUT", `/api/users/${enc(name)}/password`, { password: pw.value }); pw.value = ""; say(`password of ${name} changed`); } catch (e) { say(e.message, true); }
      });
      setPw.id = "user-password-set";
      editor.replaceChildren(
        h("h2", {}, "User ", h("code", { id: "user-edit-name" }, name)),
        h("p", { class: "muted" }, `password: ${user.password}`, user.superuser ? " · superuser" : "", user.disabled ? " · disabled" : ""),
        table([
          { label: "group", get: (r) => r },
          { label: "", get: (r) => {
            const b = writeButton("remove", async () => {
              try { await api("DELETE", `/api/groups/${enc(r)}/members/${enc(name)}`); say(`${name} removed from ${r}`); reload(); } catch (e) { say(e.message, true); }
            }, "quiet");
            b.dataset.group = r;
            return b;
          } },
        ], user.groups, { id: "user-groups-table", empty: "in no group" }),
        h("div", { class: "row" }, group, add),
        h("div", { class: "row" }, "plan", plan, setPlan),
        h("div", { class: "row" }, pw, setPw),
      );
    }

    // Groups with their members and plans; put a group on a plan.
    async function loadGroups() {
      // one request for every group, its members and its plan (not one per group)
      const [rows, plans] = await Promise.all([api("GET", "/api/groups?plans=true"), api("GET", "/api/plans")]);
      const name = h("input", { id: "group-name", placeholder: "group" });
      const plan = planSelect("group-plan", plans, null);
      const set = writeButton("Set group plan", async () => {
        const g = name.value.trim();
        try { const r = await api("PUT", `/api/groups/${enc(g)}/plan`, { plan: plan.value }); say(`group ${g}: plan ${r.plan || "none"}`); loadGroups(); } catch (e) { say(e.message, true); }
      });
      set.id = "group-plan-set";
      groups.replaceChildren(h("h2", {}, "Groups"), table([
        { label: "group", get: (r) => r.group },
        { label: "members", get: (r) => r.members.join(", ") },
        { label: "plan", get: (r) => r.plan || "–" },
      ], rows, { id: "groups-table", key: (r) => r.group, empty: "no groups" }),
      h("div", { class: "row" }, name, plan, set));
    }

    async function loadRules() {
      const all = await api("GET", "/api/acl/rules");
      const rows = [];
      for (const [subject, v] of Object.entries(all)) for (const [filter, value] of Object.entries(v.rules)) rows.push({ subject, filter, value });
      const subject = h("input", { id: "acl-subject", placeholder: "user:NAME, group:NAME, pattern, anonymous" });
      const filter = h("input", { id: "acl-filter", placeholder: "topic filter" });
      const actions = h("select", { id: "acl-actions" }, ["readwrite", "publish", "subscribe", "receive", "read", "write"].map((a) => h("option", {}, a)));
      const effect = h("select", { id: "acl-effect" }, h("option", {}, "allow"), h("option", {}, "deny"));
      rules.replaceChildren(h("h2", {}, "ACL rules"), table([
        { label: "subject", get: (r) => r.subject },
        { label: "filter", get: (r) => r.filter },
        { label: "rule", get: (r) => r.value },
        { label: "", get: (r) => writeButton("remove", async () => {
          try { await api("DELETE", `/api/acl/rules?subject=${enc(r.subject)}&filter=${enc(r.filter)}`); say("rule removed"); loadRules(); } catch (e) { say(e.message, true); }
        }, "quiet") },
      ], rows, { id: "acl-table", empty: "no rules: only superusers may do anything" }),
      h("form", { id: "acl-form", class: "row", onsubmit(ev) { ev.preventDefault(); } }, subject, filter, actions, effect, writeButton("Apply", async () => {
        try {
          const r = await api("POST", "/api/acl/rules", { subject: subject.value, filter: filter.value, actions: actions.value, effect: effect.value });
          say(`${r.subject} ${r.filter} = ${r.value}` + (r.warning ? ` (${r.warning})` : ""));
          loadRules();
        } catch (e) { say(e.message, true); }
      })));
      rules.querySelector("#acl-form button").id = "acl-apply";
    }

    function renderCheck() {
      const user = h("input", { placeholder: "username (empty: anonymous)" });
      const cid = h("input", { placeholder: "client id", value: "dashboard-check" });
      const topic = h("input", { placeholder: "topic" });
      const action = h("select", {}, ["publish", "subscribe", "receive"].map((a) => h("option", {}, a)));
      const out = h("p", { class: "muted", id: "acl-check-result" });
      check.replaceChildren(h("h2", {}, "ACL check"), h("div", { class: "row" }, user, cid, topic, action,
        h("button", { type: "button", async onclick() {
          try {
            const r = await api("POST", "/api/acl/check", { username: user.value || null, client_id: cid.value, topic: topic.value, action: action.value });
            out.textContent = `${r.allowed ? "ALLOWED" : "DENIED"}: ` + r.checks.map((c) => c.explanation || c.reason || JSON.stringify(c)).join("; ");
          } catch (e) { out.textContent = e.message; }
        } }, "Check")), out);
    }
    loadUsers().catch((e) => say(e.message, true));
    loadEditor().catch((e) => say(e.message, true));
    loadGroups().catch((e) => say(e.message, true));
    loadRules().catch((e) => say(e.message, true));
    renderCheck();
  },
};

VIEWS.quotas = {
  title: "Quotas", nav: true,
  render(main, params) {
    // the limits of the default and of one user (plans: VIEWS.plans)
    const who = h("input", { id: "quota-user", placeholder: "username (empty: the default limits)", value: params.user || "" });
    const box = h("div", { id: "quota-box" });
    main.append(h("h1", {}, "Quotas"), h("div", { class: "panel" },
      h("div", { class: "row" }, who, h("button", { type: "button", onclick: () => load() }, "Show")), box));
    async function load() {
      const user = who.value.trim();
      const base = user ? `/api/quotas/users/${enc(user)}` : "/api/quotas/default";
      let q;
      try { q = await api("GET", base); } catch (e) { box.replaceChildren(h("p", { class: "muted" }, e.message)); return; }
      const inputs = {};
      const fields = ["events", "bytes", "events_direction", "rate", "session_time", "sessions", "max_queue", "queue_grace", "on_exceed"];
      // an input holds the value set at this level; a user's field left empty falls back to the default
      const own = (f) => q.limits[f] && (!user || q.limits[f].from.includes("quota:user:"));
      const rows = fields.map((f) => {
        const cur = q.limits[f];
        inputs[f] = h("input", {
          "data-field": f, value: own(f) ? cur.value : "", placeholder: cur ? `default: ${cur.value}` : "unset",
        });
        return { f, cur };
      });
      box.replaceChildren(
        h("h2", {}, user ? `Limits of ${user}` : "Default limits"),
        table([
          { label: "field", get: (r) => r.f },
          { label: "value", get: (r) => inputs[r.f] },
          { label: "from", get: (r) => (r.cur ? r.cur.from : "–") },
        ], rows, { id: "limits-table" }),
        h("div", { class: "row" }, writeButton("Save", async () => {
          const body = {};
          for (const f of fields) {
            const v = inputs[f].value.trim();
            if (v) body[f] = v; else if (own(f)) body[f] = null;
          }
          try { await api("PATCH", base, body); say("limits saved"); load(); } catch (e) { say(e.message, true); }
        }), user ? writeButton("Reset usage", async () => {
          try { await api("POST", `${base}/reset`); say("usage reset"); load(); } catch (e) { say(e.message, true); }
        }, "quiet") : null),
        user ? h("div", {}, h("h2", {}, "Use"), quotaBars({ metrics: q.usage || {} })) : null,
        q.problems && q.problems.length ? h("p", { class: "muted" }, "Problems: " + q.problems.join("; ")) : null,
      );
    }
    load();
  },
};

VIEWS.plans = {
  title: "Plans", nav: true,
  render(main, params) {
    // plans (named quota templates), APIs (named sets of topic filters) and metered usage: the CLI's
    // `plan`, `api` and `usage`, over /api/plans, /api/apis and /api/usage
    const plans = h("div", { class: "panel", id: "plans" });
    const apis = h("div", { class: "panel", id: "apis" });
    const usage = h("div", { class: "panel", id: "usage" });
    main.append(h("h1", {}, "Plans, APIs and usage"), plans, apis, usage);
    const fields = ["events", "bytes", "events_direction", "rate", "session_time", "sessions", "max_queue", "queue_grace", "on_exceed"];
    async function loadPlans() {
      const list = await api("GET", "/api/plans");
      const name = h("input", { id: "plan-name", placeholder: "plan name" });
      const api_ = h("input", { id: "plan-api", placeholder: "API (optional: events/bytes of that API)" });
      const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { "data-field": f, placeholder: f })]));
      plans.replaceChildren(h("h2", {}, "Plans"), table([
        { label: "plan", get: (r) => r.name },
        { label: "fields", get: (r) => Object.entries(r.fields).sort().map(([k, v]) => `${k}=${v}`).join(", ") },
        { label: "", get: (r) => writeButton("delete", async () => {
          try { await api("DELETE", `/api/plans/${enc(r.name)}`); say(`plan ${r.name} deleted`); loadPlans(); } catch (e) { say(e.message, true); }
        }, "quiet") },
      ], Object.entries(list).map(([n, f]) => ({ name: n, fields: f })), { id: "plans-table", empty: "no plans" }),
      h("div", { class: "row" }, name, api_),
      h("div", { class: "row" }, ...fields.map((f) => inputs[f])),
      h("div", { class: "row" }, writeButton("Set plan", async () => {
        const body = {};
        for (const f of fields) if (inputs[f].value.trim()) body[f] = inputs[f].value.trim();
        if (api_.value.trim()) body.api = api_.value.trim();
        try { await api("PUT", `/api/plans/${enc(name.value.trim())}`, body); say(`plan ${name.value.trim()} set`); loadPlans(); } catch (e) { say(e.message, true); }
      })));
    }
    async function loadApis() {
      const list = await api("GET", "/api/apis");
      const name = h("input", { id: "api-name", placeholder: "API name" });
      const filters = h("input", { id: "api-filters", placeholder: "topic filters, space-separated" });
      apis.replaceChildren(h("h2", {}, "APIs"), table([
        { label: "API", get: (r) => r.name },
        { label: "filters", get: (r) => r.filters.join(" ") },
        { label: "", get: (r) => writeButton("remove", async () => {
          try { await api("DELETE", `/api/apis/${enc(r.name)}`); say(`API ${r.name} removed`); loadApis(); } catch (e) { say(e.message, true); }
        }, "quiet") },
      ], Object.entries(list).map(([n, f]) => ({ name: n, filters: f })), { id: "apis-table", empty: "no APIs" }),
      h("div", { class: "row" }, name, filters, writeButton("Add API", async () => {
        const body = { filters: filters.value.split(/\s+/).filter(Boolean) };
        try { await api("PUT", `/api/apis/${enc(name.value.trim())}`, body); say(`API ${name.value.trim()} set`); loadApis(); } catch (e) { say(e.message, true); }
      })));
    }
    const who = h("input", { id: "usage-user", placeholder: "username", value: params.user || "" });
    const month = h("input", { id: "usage-month", placeholder: "YYYY-MM (empty: this month)", value: params.month || "" });
    const box = h("div", { id: "usage-box" });
    usage.append(h("h2", {}, "Metered usage"), h("div", { class: "row" }, who, month,
      h("button", { type: "button", id: "usage-show", onclick: () => loadUsage() }, "Show")), box);
    async function loadUsage() {
      if (!who.value.trim()) return;
      const m = month.value.trim();
      let u;
      try { u = await api("GET", `/api/usage/${enc(who.value.trim())}${m ? `?month=${enc(m)}` : ""}`); } catch (e) { box.replaceChildren(h("p", { class: "muted" }, e.message)); return; }
      box.replaceChildren(h("p", { class: "muted" }, `${u.user} in ${u.month} (UTC)`), table([
        { label: "API", get: (r) => r.api || "all traffic" },
        { label: "events in", num: true, get: (r) => fmt.num(r.events_in) },
        { label: "bytes in", num: true, get: (r) => fmt.num(r.bytes_in) },
        { label: "events out", num: true, get: (r) => fmt.num(r.events_out) },
        { label: "bytes out", num: true, get: (r) => fmt.num(r.bytes_out) },
      ], Object.entries(u.total).map(([a, c]) => ({ api: a, ...c })), { id: "usage-table", empty: "nothing metered" }));
    }
    loadPlans().catch((e) => say(e.message, true));
    loadApis().catch((e) => say(e.message, true));
    loadUsage();
  },
};

VIEWS.bans = {
  title: "Bans", nav: true,
  render(main) {
    const bans = h("div", { class: "panel", id: "bans" });
    const blocks = h("div", { class: "panel", id: "blocks" });
    main.append(h("h1", {}, "Bans and blocks"), bans, blocks);
    const left = (until) => (until === null ? "until lifted" : `${Math.max(0, Math.round(until - Date.now() / 1000))} s left`);
    async function load() {
      const [list, blocked] = await Promise.all([api("GET", "/api/bans"), api("GET", "/api/blocks")]);
      const net = h("input", { id: "ban-network", placeholder: "address or CIDR network" });
      const secs = h("input", { id: "ban-seconds", type: "number", min: 1, placeholder: "seconds (empty: until lifted)" });
      const why = h("input", { id: "ban-reason", placeholder: "reason" });
      const kick = h("input", { id: "ban-kick", type: "checkbox" });
      bans.replaceChildren(h("h2", {}, "Address bans (CONNACK 5 on every broker)"), table([
        { label: "network", get: (r) => r.network + (r.username ? ` as ${r.username}` : "") },
        { label: "by", get: (r) => (r.kind === "manual" ? r.by : `throttling (${r.kind})`) },
        { label: "reason", get: (r) => r.reason },
        { label: "left", num: true, get: (r) => left(r.until) },
        { label: "", get: (r) => writeButton("lift", async () => {
          try { await api("DELETE", `/api/bans?network=${enc(r.network)}`); say(`${r.network} unbanned`); load(); } catch (e) { say(e.message, true); }
        }, "quiet") },
      ], list, { id: "bans-table", empty: "no bans in force" }),
      h("div", { class: "row" }, net, secs, why, h("label", {}, kick, " also disconnect its clients"), writeButton("Ban", async () => {
        const body = { network: net.value.trim(), kick: kick.checked };
        if (secs.value) body.seconds = Number(secs.value);
        if (why.value) body.reason = why.value;
        try { await api("POST", "/api/bans", body); say(`${body.network} banned`); load(); } catch (e) { say(e.message, true); }
      })));
      blocks.replaceChildren(h("h2", {}, "Blocked client ids and users (kicks with a block, quota blocks)"), table([
        { label: "kind", get: (r) => r.kind },
        { label: "name", get: (r) => r.name },
        { label: "by", get: (r) => r.by },
        { label: "reason", get: (r) => r.reason },
        { label: "left", num: true, get: (r) => left(r.until) },
        { label: "", get: (r) => writeButton("lift", async () => {
          try { await api("DELETE", `/api/blocks/${r.kind === "client" ? "clients" : "users"}/${enc(r.name)}`); say(`${r.name} unblocked`); load(); } catch (e) { say(e.message, true); }
        }, "quiet") },
      ], blocked, { id: "blocks-table", empty: "nothing blocked" }));
    }
    load().catch((e) => say(e.message, true));
  },
};

VIEWS.audit = {
  title: "Audit", nav: true,
  render(main) {
    const box = h("div", { class: "panel" });
    main.append(h("h1", {}, "Audit stream"), box);
    every(10, async () => {
      const entries = (await api("GET", "/api/audit?count=200")).reverse();
      box.replaceChildren(table([
        { label: "time", get: (r) => fmt.time(r.time) },
        { label: "action", get: (r) => r.action },
        { label: "by", get: (r) => r.by },
        { label: "details", get: (r) => Object.entries(r).filter(([k]) => !["id", "time", "action", "by"].includes(k)).map(([k, v]) => `${k}=${v}`).join("  ") },
      ], entries, { id: "audit-table", empty: "nothing audited yet" }));
    });
  },
};

// -- routing: #view?param=value ----------------------------------------------------------------------
function parseHash() {
  const [name, query] = location.hash.replace(/^#/, "").split("?");
  return { name: name || "overview", params: Object.fromEntries(new URLSearchParams(query || "")) };
}

function go(name, params) {
  const q = new URLSearchParams(params || {}).toString();
  const hash = "#" + name + (q ? "?" + q : "");
  if (location.hash === hash) render(); else location.hash = hash;
}

async function whoami() {
  if (state.me) return state.me;
  try {
    const me = await api("GET", "/api/session");
    state.me = me;
    state.csrf = me.csrf;
  } catch (e) {
    state.me = null;
  }
  return state.me;
}

async function render() {
  stopAll();
  const { name, params } = parseHash();
  const main = document.getElementById("main");
  main.replaceChildren();
  const me = name === "login" ? null : await whoami();
  const view = me ? (VIEWS[name] || VIEWS.overview) : VIEWS.login;
  if (!me && name !== "login") { history.replaceState(null, "", "#login"); }
  if (me) {
    document.getElementById("top").hidden = false;
    document.getElementById("who").textContent = `${me.name}${me.read_only ? " (read-only)" : ""}`;
    document.getElementById("nav").replaceChildren(...Object.entries(VIEWS).filter(([, v]) => v.nav).map(([k, v]) =>
      h("a", { href: "#" + k, class: k === name ? "active" : null, id: "nav-" + k }, v.title)));
  }
  document.title = `${view.title} · mqtt-guard`;
  try {
    view.render(main, params);
  } catch (e) {
    say(e.message, true);
  }
}

window.addEventListener("unhandledrejection", (ev) => {
  const e = ev.reason;
  ev.preventDefault(); // shown here, not left to the console
  if (e instanceof ApiError && e.status === 401) return;
  say(e && e.message ? e.message : String(e), true);
});
window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/session"); } catch (e) { /* gone already */ }
    state.me = null;
    state.csrf = null;
    go("login");
  });
  render();
});
