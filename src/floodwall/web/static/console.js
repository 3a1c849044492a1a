// The operator console: reads the admin API every few seconds and drives it. Same-origin only; every change
// carries the console header, which the admin API asks of cookie sessions (no CSRF).
"use strict";
(() => {
  const header = document.body.dataset.header;
  const COMPONENTS = ["web", "api", "registration", "login", "model"];
  const STATUSES = ["degraded_performance", "partial_outage", "major_outage", "under_maintenance"];
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "on") for (const [name, handler] of Object.entries(value)) node.addEventListener(name, handler);
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
    return node;
  }

  function show(problem) {
    $("problem").textContent = problem || "";
    $("problem").hidden = !problem;
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method, credentials: "same-origin",
      headers: { "content-type": "application/json", [header]: "1" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    return data;
  }

  async function act(method, path, body) {
    try { await api(method, path, body); show(""); await refresh(); }
    catch (error) { show(error.message); }
  }

  const when = (at) => new Date(typeof at === "number" ? at * 1000 : at).toLocaleString([], {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function rows(id, items, row) {
    $(id).replaceChildren(...(items.length ? items.map(row) : [el("tr", {}, el("td", { class: "muted" }, "none"))]));
  }

  function renderLevel(state) {
    $("level").textContent = state.level;
    $("level").className = `badge level-${state.level}`;
    $("level-mode").textContent = state.mode === "auto" ? "(auto)" : `(pinned: ${state.mode})`;
    $("level-why").textContent = `${state.by || ""}: ${state.reason || ""}`;
    rows("level-history", (state.history || []).slice(0, 8), (h) =>
      el("tr", {}, el("td", {}, when(h.at)), el("td", {}, h.mode === "auto" ? `${h.level} (auto)` : h.level),
        el("td", {}, `${h.by}: ${h.reason}`)));
  }

  function renderRegistration(state) {
    $("registration").textContent = state.mode;
    $("registration").className = `badge registration-${state.mode}`;
    $("registration-pin").textContent = state.pinned === "auto" ? "(by level)" : `(pinned: ${state.pinned})`;
    const q = state.queue || {};
    $("queue").textContent = `Waiting room: ${q.waiting ?? 0} waiting, ${q.issued ?? 0} tickets issued, ` +
      `${q.per_minute ?? 0} admitted a minute. Proof of work: ${state.challenge || "none"}.`;
  }

  function renderTraffic(t) {
    const series = t.per_second || [];
    const top = Math.max(1, ...series.map((s) => s.arrivals));
    const line = (key) => series.map((s, i) =>
      `${(i / Math.max(1, series.length - 1)) * 600},${120 - (s[key] / top) * 110}`).join(" ");
    $("chart").replaceChildren(...["arrivals", "refused", "errors"].map((key) => {
      const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      poly.setAttribute("points", line(key));
      poly.setAttribute("class", `line ${key}`);
      return poly;
    }));
    const classes = Object.entries(t.requests || {});
    rows("classes", classes, ([klass, outcomes]) => el("tr", {}, el("td", {}, klass),
      ...["2xx", "3xx", "4xx", "5xx", "refused"].map((o) => el("td", {}, outcomes[o] || 0))));
    const events = Object.entries(t.events || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    $("events").textContent = `${t.arrivals} requests, ${t.new_addresses} new addresses, ${t.new_networks} new networks` +
      (events ? `; ${events}` : "");
    rows("talkers", (t.top_talkers || []).slice(0, 10), (talker) => el("tr", {},
      el("td", {}, talker.key), el("td", {}, talker.hits),
      el("td", {}, el("button", { class: "secondary small", type: "button", on: { click: () =>
        act("POST", "/admin/api/bans", { target: talker.key, duration: "1h", reason: "console" }) } }, "Ban 1h"))));
  }

  function renderBans(data) {
    rows("bans", data.bans, (b) => el("tr", {}, el("td", {}, b.target), el("td", {}, `${b.expires_in}s`),
      el("td", {}, b.reason), el("td", {}, el("button", { class: "danger", type: "button", on: { click: () =>
        act("DELETE", `/admin/api/bans/${b.target}`) } }, "Lift"))));
  }

  function renderIncidents(data) {
    const items = data.incidents.slice(0, 10).map((incident) => {
      const box = el("article", { class: "incident", "data-incident": incident.id },
        el("h3", {}, `${incident.name} `, el("span", { class: "muted" },
          `(${incident.status}, ${incident.impact}${incident.automatic ? ", automatic" : ""})`)),
        el("ol", { class: "timeline" }, ...incident.updates.map((u) =>
          el("li", {}, el("strong", {}, u.status), ` — ${u.body} `, el("span", { class: "muted" }, `${when(u.at)} · ${u.by}`)))));
      if (incident.status !== "resolved") {
        const status = el("select", { "aria-label": "status" },
          ...["investigating", "identified", "monitoring", "resolved"].map((s) => el("option", {}, s)));
        status.value = incident.status;
        const body = el("input", { "aria-label": "update", placeholder: "update", required: "" });
        box.append(el("form", { class: "row", on: { submit: (event) => {
          event.preventDefault();
          act("POST", `/admin/api/incidents/${incident.id}/updates`, { status: status.value, body: body.value });
        } } }, status, body, el("button", { type: "submit" }, "Post update")));
      }
      return box;
    });
    $("incidents").replaceChildren(...(items.length ? items : [el("p", { class: "muted" }, "No incidents.")]));
  }

  function renderUsers(data) {
    rows("users", data.users, (u) => el("tr", {}, el("td", {}, u.id), el("td", {}, u.email),
      el("td", {}, u.disabled ? "disabled" : "active"), el("td", {}, `${u.sessions} sessions, ${u.keys} keys`),
      el("td", {},
        el("button", { class: "secondary small", type: "button", on: { click: () =>
          act("POST", `/admin/api/users/${u.id}/${u.disabled ? "enable" : "disable"}`).then(findUsers) } },
          u.disabled ? "Enable" : "Disable"), " ",
        el("button", { class: "secondary small", type: "button", on: { click: () =>
          act("POST", `/admin/api/users/${u.id}/sign-out`).then(findUsers) } }, "Sign out everywhere"))));
  }

  function renderAudit(data) {
    rows("audit", data.events.slice(0, 30), (e) => el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.actor),
      el("td", {}, e.action), el("td", {}, e.target),
      el("td", { class: "muted" }, Object.entries(e.detail).map(([k, v]) => `${k}=${v}`).join(" "))));
  }

  async function findUsers() {
    renderUsers(await api("GET", `/admin/api/users?q=${encodeURIComponent($("users-query").value)}&limit=20`));
  }

  let slow = 0;
  async function refresh() {
    try {
      const [level, registration, traffic, bans] = await Promise.all([
        api("GET", "/admin/api/level"), api("GET", "/admin/api/registration"),
        api("GET", "/admin/api/traffic"), api("GET", "/admin/api/bans")]);
      renderLevel(level); renderRegistration(registration); renderTraffic(traffic); renderBans(bans);
      if (slow++ % 3 === 0) {  // incidents and the audit log change rarely: a third as often
        const [incidents, audit] = await Promise.all([api("GET", "/admin/api/incidents"), api("GET", "/admin/api/audit?limit=30")]);
        renderIncidents(incidents); renderAudit(audit);
      }
      document.body.dataset.ready = "1";
    } catch (error) { show(`The admin API did not answer: ${error.message}`); }
  }

  $("incident-components").append(...COMPONENTS.map((key) => el("label", { class: "inline-label" }, key, " ",
    el("select", { name: key }, el("option", { value: "" }, "unaffected"), ...STATUSES.map((s) => el("option", {}, s))))));
  $("level-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("PUT", "/admin/api/level", { level: $("level-choice").value, reason: $("level-reason").value });
  });
  $("registration-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("PUT", "/admin/api/registration", { mode: $("registration-choice").value, reason: "console" });
  });
  $("ban-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("POST", "/admin/api/bans", { target: $("ban-target").value, duration: $("ban-duration").value, reason: "console" });
  });
  $("incident-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    const components = {};
    for (const key of COMPONENTS) if (form.elements[key].value) components[key] = form.elements[key].value;
    act("POST", "/admin/api/incidents", { name: form.elements.name.value, body: form.elements.body.value,
      impact: form.elements.impact.value, components }).then(() => { slow = 0; form.reset(); return refresh(); });
  });
  $("users-form").addEventListener("submit", (event) => { event.preventDefault(); findUsers().catch((e) => show(e.message)); });
  refresh();
  findUsers().catch(() => {});
  setInterval(refresh, 5000);
})();
