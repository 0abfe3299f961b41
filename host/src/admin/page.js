"use strict";
// The status page: polls /status (same origin) and renders it with
// textContent only; nothing from the agent is ever parsed as HTML.
(() => {
  const POLL_MS = 400;
  const HIDDEN_POLL_MS = 5000;
  const TIMEOUT_MS = 2000;
  const $ = (id) => document.getElementById(id);
  let lastAnswer = 0;
  let lastError = "";

  // Control and bidi characters shown as \u{..}, like the command line.
  const shown = (value) =>
    String(value ?? "").replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
      (c) => "\\u{" + c.codePointAt(0).toString(16) + "}");

  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = shown(text);
    if (cls) node.className = cls;
    return node;
  };
  const stateClass = (word) => "state s-" + String(word).replace(/[^a-z-]/g, "");
  const time = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
  const ago = (now, ms) => {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 120) return s + "s ago";
    if (s < 7200) return Math.round(s / 60) + "m ago";
    return Math.round(s / 3600) + "h ago";
  };
  const bytes = (n) => (n == null ? "" : (n / 1048576).toFixed(1) + " MiB");

  function checkNode(now, check) {
    const box = el("div", null, "check");
    box.append(el("span", check.check, "mono"), " ",
      el("span", check.status, stateClass(check.status)));
    if (check.since_ms) box.append(" ", el("span", "since " + ago(now, check.since_ms), "muted"));
    const runs = el("span", null, "runs");
    for (const run of check.history || []) {
      const mark = el("span", null, "run " + (run.passed ? "pass" : "fail"));
      mark.title = shown(time(run.at_ms) + " " + (run.passed ? "pass" : "fail") + ": " + run.output);
      runs.append(mark);
    }
    box.append(runs);
    box.append(el("div", check.output === "" ? "not run yet" : check.output, "muted output"));
    return box;
  }

  function instanceRow(now, inst) {
    const row = el("tr");
    row.dataset.id = inst.id;
    row.className = "instance";
    const state = el("td");
    state.append(el("div", inst.state, stateClass(inst.state)));
    if (inst.since_ms) state.append(el("div", "since " + ago(now, inst.since_ms), "muted"));
    const checks = el("td");
    if ((inst.checks || []).length === 0) checks.append(el("span", "none", "empty"));
    for (const c of inst.checks || []) checks.append(checkNode(now, c));
    const where = el("td");
    where.append(el("div", inst.source), el("div", inst.origin, "muted"));
    const key = el("td");
    key.append(el("div", inst.key, "key"),
      el("div", inst.lease ? "lease " + inst.lease : "no lease", "muted"));
    if (inst.ttl) key.append(el("div", "ttl " + inst.ttl, "muted"));
    const service = el("td");
    service.append(el("div", inst.service, "service"));
    for (const endpoint of inst.endpoints || []) service.append(el("div", endpoint, "mono muted endpoint"));
    for (const [k, v] of Object.entries(inst.metadata || {})) {
      service.append(el("div", k + "=" + v, "mono muted metadata"));
    }
    row.append(service, el("td", inst.id, "mono id"), state,
      el("td", inst.reason, "reason"), checks, where, key);
    return row;
  }

  function pluginRow(now, p) {
    const row = el("tr");
    row.dataset.name = p.name;
    row.className = "plugin";
    row.append(el("td", p.name, "mono"), el("td", p.kind), el("td", p.version),
      el("td", p.state, stateClass(p.state)), el("td", p.loaded_ms ? ago(now, p.loaded_ms) : ""),
      el("td", p.kind === "check" ? "by its checks" : ago(now, p.last_call_ms)),
      el("td", String(p.calls)), el("td", String(p.errors)),
      el("td", p.last_error || "", "muted last-error"),
      el("td", bytes(p.memory_bytes) + " / " + bytes(p.memory_limit_bytes)));
    return row;
  }

  function render(status) {
    const now = status.now_ms || Date.now();
    const e = status.etcd || {};
    const session = $("etcd");
    const pairs = [
      ["endpoints", (e.endpoints || []).join(", ")],
      ["connection", e.connected ? "connected" : "not answering"],
      ["lease", e.lease ? e.lease + " (TTL " + e.ttl_s + "s" +
        (e.ttl_left_ms != null ? ", " + Math.floor(e.ttl_left_ms / 1000) + "s left" : "") + ")" : "none"],
      ["registered", e.registered + " of " + e.desired + (e.ready ? " (ready)" : " (not ready)")],
      ["anti-entropy", e.last_repair_check_ms
        ? ago(now, e.last_repair_check_ms) + ", " + e.last_repaired + " repaired" : "not yet"],
    ];
    session.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));

    const node = $("node");
    node.replaceChildren();
    if (status.maintenance != null) node.append(el("div", "node maintenance: " + status.maintenance));
    if (status.drained) node.append(el("div", "node drained"));

    const rows = (status.instances || []).map((i) => instanceRow(now, i));
    for (const f of status.refused || []) {
      const row = el("tr", null, "refused");
      row.append(el("td", f.file, "mono"), el("td", ""),
        el("td", "refused", stateClass("refused")), el("td", (f.reasons || []).join("; "), "reason"),
        el("td", ""), el("td", "file"), el("td", ""));
      rows.push(row);
    }
    if (rows.length === 0) {
      const row = el("tr");
      const cell = el("td", "no instances configured", "empty");
      cell.colSpan = 7;
      row.append(cell);
      rows.push(row);
    }
    $("instances").replaceChildren(...rows);

    const plugins = (status.plugins || []).map((p) => pluginRow(now, p));
    if (plugins.length === 0) {
      const row = el("tr");
      const cell = el("td", "no plugins loaded", "empty");
      cell.colSpan = 10;
      row.append(cell);
      plugins.push(row);
    }
    $("plugins").replaceChildren(...plugins);
  }

  function setLive(up) {
    const live = $("live");
    document.body.classList.toggle("down", !up);
    live.className = up ? "up" : "down";
    if (up) {
      live.textContent = "live";
      $("updated").textContent = "updated " + time(lastAnswer);
    } else {
      live.textContent = "not answering";
      $("updated").textContent = shown((lastAnswer ? "last answer " + time(lastAnswer) : "no answer yet") +
        (lastError ? " — " + lastError : ""));
    }
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch("status", { cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const status = await response.json();
      render(status);
      lastAnswer = Date.now();
      lastError = "";
      setLive(true);
    } catch (error) {
      lastError = error && error.name === "AbortError" ? "no answer within 2s" : String(error && error.message || error);
      setLive(false);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }
  }
  poll();
})();
