// The ClusterWare web console: a client of the head's JSON API (/api/v1) with the token typed
// into the login form (kept in this tab's sessionStorage). Nothing is shown until a token is
// accepted; a 401/403 at any time returns to the login form. Every piece of data goes into the
// page through textContent and DOM properties, never as markup: node names and attributes come
// from users and nodes.
"use strict";
(() => {
  const API = "/api/v1";
  const KEY = "clusterware.console.token";
  const ROW_H = 26; // pixels; the same as .row's height in console.css
  const OVERSCAN = 8;
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  let token = sessionStorage.getItem(KEY);
  let stream = null; // the AbortController of the update stream

  const S = {
    heads: [],
    cluster: null,
    nodes: new Map(), // uid -> node
    status: new Map(), // uid -> status
    configs: null, // BootConfigList
    images: null, // ImageList
    files: null, // FileList
    rows: new Map(), // uid -> derived row
    view: [], // uids, filtered and sorted
    filter: null, // Set of uids, or null for all
    sort: { key: "name", dir: 1 },
    selected: new Set(),
    tab: ["heads", "nodes", "boot", "events"].includes(location.hash.slice(1)) ? location.hash.slice(1) : "heads",
    events: [], // newest first, at most EVENTS_SHOWN
    eventIds: new Set(),
    detail: null,
    rendered: 0, // rows drawn at least once (the load-time measure of the tests waits for it)
  };
  window.consoleState = S; // for the browser tests: read-only use

  class AuthError extends Error {}

  // ---------- the API ----------
  async function api(method, path, body) {
    const opts = { method, headers: { Authorization: "Bearer " + token }, cache: "no-store" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(API + path, opts);
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401 || r.status === 403) {
      const msg = data && data.message ? data.message : "the token is not accepted";
      logout(($("app").hidden ? "This token is not accepted: " : "Logged out: ") + msg);
      throw new AuthError(msg);
    }
    if (!r.ok) {
      throw new Error(data && data.message ? data.message : "HTTP " + r.status + " from " + path);
    }
    return data;
  }

  // One run at a time; a request meanwhile runs once more after it, no sooner than `gap()`
  // milliseconds after the run before (big tables are not fetched again and again).
  function loader(fn, gap) {
    let running = false;
    let again = false;
    return async function run() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          await fn();
          if (again && gap) await sleep(gap());
        } while (again && token);
      } catch (e) {
        if (!(e instanceof AuthError)) say("Cannot load: " + e.message, true);
      } finally {
        running = false;
      }
    };
  }

  // ---------- small DOM helpers ----------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function td(text, cls) {
    return el("td", cls, text);
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function say(text, failed) {
    const f = $("result");
    f.textContent = text;
    f.classList.toggle("failed", !!failed);
  }
  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n) || 0;
    while (v >= 1024 && i < u.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + u[i];
  }
  function when(secs) {
    if (!secs) return "";
    const d = new Date(secs * 1000);
    const pad = (x) => String(x).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" +
      pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  // n[0-2,5],x: the names as one selector, for confirmations (the CLI's compact form).
  function compress(names) {
    const groups = new Map();
    const other = [];
    for (const n of names) {
      const m = /^(.*?)(0|[1-9][0-9]*)$/.exec(n);
      if (!m) {
        other.push(n);
        continue;
      }
      if (!groups.has(m[1])) groups.set(m[1], []);
      groups.get(m[1]).push(Number(m[2]));
    }
    const out = [];
    for (const [prefix, nums] of groups) {
      nums.sort((a, b) => a - b);
      const parts = [];
      let start = nums[0];
      let prev = nums[0];
      for (const x of nums.slice(1).concat([NaN])) {
        if (x === prev + 1) {
          prev = x;
          continue;
        }
        if (x === prev) continue;
        parts.push(start === prev ? String(start) : start + "-" + prev);
        start = x;
        prev = x;
      }
      out.push(nums.length === 1 ? prefix + nums[0] : prefix + "[" + parts.join(",") + "]");
    }
    return out.concat(other).join(",");
  }

  // ---------- login ----------
  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  function logout(message) {
    token = null;
    sessionStorage.removeItem(KEY);
    if (stream) stream.abort();
    stream = null;
    if (eventsFollow) eventsFollow.abort();
    eventsFollow = null;
    S.events = [];
    S.eventIds = new Set();
    clear($("events-table").tBodies[0]);
    S.nodes = new Map();
    S.status = new Map();
    S.rows = new Map();
    S.view = [];
    S.heads = [];
    S.selected.clear();
    clear($("heads-table").tBodies[0]);
    clear($("nodes-rows"));
    pool.length = 0;
    showLogin(message);
  }

  async function tryToken(t) {
    token = t;
    try {
      // An admin endpoint: only an accepted token gets past it.
      const c = await api("GET", "/cluster");
      sessionStorage.setItem(KEY, t);
      S.cluster = c;
      startApp();
    } catch (e) {
      if (!(e instanceof AuthError)) showLogin("Cannot check the token: " + e.message);
    }
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) {
      $("login-error").textContent = "Type an API token.";
      return;
    }
    tryToken(t);
  });
  $("logout").addEventListener("click", () => logout("Logged out."));

  function startApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    showTab(S.tab);
    refreshAll();
    live();
  }

  function refreshAll() {
    loadHeads();
    loadBoot().then(() => loadNodes());
    loadStatus();
  }

  // ---------- tabs ----------
  function showTab(name) {
    S.tab = name;
    history.replaceState(null, "", "#" + name);
    for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
    for (const t of ["heads", "nodes", "boot", "events"]) $("tab-" + t).hidden = t !== name;
    if (name === "nodes") renderRows();
    if (name === "boot") loadBoot();
    if (name === "events") followEvents();
    else if (eventsFollow) eventsFollow.abort();
  }
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));

  // ---------- events ----------
  // The latest events, then a long poll for each next one while the tab shows (the API hands a
  // long poll only settled events; the listing's own may come again and are skipped by id).
  const EVENTS_SHOWN = 500;
  let eventsFollow = null; // the AbortController of the long poll

  function kindQuery() {
    const k = $("event-kind").value;
    return k ? "&kind=" + encodeURIComponent(k) : "";
  }

  async function followEvents() {
    if (eventsFollow) eventsFollow.abort();
    const ctl = new AbortController();
    eventsFollow = ctl;
    S.events = [];
    S.eventIds = new Set();
    try {
      const first = await api("GET", "/events?limit=" + EVENTS_SHOWN + kindQuery());
      if (ctl.signal.aborted) return;
      addEvents(first.events);
      let after = first.next;
      while (!ctl.signal.aborted && token) {
        const r = await fetch(API + "/events?after=" + encodeURIComponent(after) + "&wait=25" + kindQuery(), {
          headers: { Authorization: "Bearer " + token },
          cache: "no-store",
          signal: ctl.signal,
        });
        if (r.status === 401 || r.status === 403) {
          logout("Logged out: the token is no longer accepted");
          return;
        }
        if (!r.ok) {
          await sleep(2000);
          continue;
        }
        const page = await r.json();
        addEvents(page.events);
        if (page.next) after = page.next;
      }
    } catch (e) {
      if (e.name !== "AbortError" && !(e instanceof AuthError)) say("Cannot load events: " + e.message, true);
    }
  }

  function addEvents(list) {
    const fresh = list.filter((e) => !S.eventIds.has(e.id));
    if (!fresh.length && S.events.length) return;
    for (const e of fresh) S.eventIds.add(e.id);
    S.events = fresh.reverse().concat(S.events).slice(0, EVENTS_SHOWN);
    renderEvents();
  }

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function renderEvents() {
    const body = $("events-table").tBodies[0];
    clear(body);
    for (const e of S.events) {
      const tr = el("tr", "event-" + e.kind);
      tr.dataset.id = e.id;
      tr.appendChild(td(utc(e.time_ms)));
      tr.appendChild(td(e.kind));
      tr.appendChild(td(e.head));
      tr.appendChild(td(e.subject));
      tr.appendChild(td(e.message));
      tr.appendChild(td(e.actor || ""));
      tr.appendChild(td(e.from || ""));
      const failed = e.outcome && e.outcome !== "ok";
      tr.appendChild(td(e.outcome || "", failed ? "failed" : ""));
      body.appendChild(tr);
    }
    $("event-count").textContent = S.events.length + (S.events.length === 1 ? " event" : " events");
  }
  $("event-kind").addEventListener("change", () => followEvents());

  // ---------- heads ----------
  const loadHeads = loader(async () => {
    const [h, c] = await Promise.all([api("GET", "/heads"), api("GET", "/cluster")]);
    S.heads = h.heads;
    S.cluster = c;
    renderHeads();
    if (S.tab === "boot") renderBoot();
  });

  function role(m) {
    if (!m) return "";
    const names = { voting: "voter", learner: "learner", solo: "solo (embedded)", external: "external etcd" };
    let r = names[m.state] || m.state;
    if (m.leader) r = "leader, " + r;
    return r;
  }

  function renderHeads() {
    const body = $("heads-table").tBodies[0];
    clear(body);
    for (const h of S.heads) {
      const tr = el("tr");
      tr.dataset.head = h.name;
      tr.appendChild(td(h.name));
      tr.appendChild(td(h.alive ? "alive" : "down", h.alive ? "state-alive" : "state-dead"));
      tr.appendChild(td(role(h.db_member)));
      tr.appendChild(td(h.version));
      const s = h.storage;
      tr.appendChild(td(s ? s.files : "not audited", "num"));
      tr.appendChild(td(s ? s.missing : "", "num"));
      tr.appendChild(td(s ? s.bad : "", "num"));
      tr.appendChild(td(s ? bytes(s.bytes) : "", "num"));
      tr.appendChild(td(h.nodes, "num"));
      tr.appendChild(td(h.api_url));
      body.appendChild(tr);
    }
    const f = S.cluster && S.cluster.failover;
    let text = "";
    if (f) {
      text = "Failover: " + (f.enabled ? "enabled after " + f.timeout_secs + " s" : "disabled") +
        (f.enabled ? (f.armed ? ", armed" : ", used (reset to arm it again)") : "");
      if (f.last) {
        text += "; last: " + f.last.head + " ejected by " + f.last.by + " at " + when(f.last.at) +
          (f.last.error ? " (failed: " + f.last.error + ")" : "");
      }
    }
    $("failover").textContent = text;
  }

  // ---------- boot configs, images, files ----------
  const loadBoot = loader(async () => {
    const [c, i, f] = await Promise.all([api("GET", "/bootconfigs"), api("GET", "/images"), api("GET", "/files")]);
    S.configs = c;
    S.images = i;
    S.files = f;
    renderBoot();
    rebuild();
  });

  function fileName(id) {
    const f = S.files && S.files.files.find((x) => x.id === id);
    return f ? f.name : id;
  }
  // Why a file cannot be served: no head holds a verified copy.
  function fileProblem(id, what) {
    if (!S.files || !id) return null;
    const c = S.files.copies && S.files.copies[id];
    if (!S.files.files.some((x) => x.id === id)) return what + " " + id + " is not a known file";
    if (!c || c.heads.length === 0) return what + " " + fileName(id) + ": no head holds a verified copy";
    return null;
  }
  function configProblems(cfg) {
    const p = [];
    const add = (x) => x && p.push(x);
    add(fileProblem(cfg.kernel, "kernel"));
    add(fileProblem(cfg.initramfs, "initramfs"));
    if (cfg.image) {
      const img = S.images && S.images.images.find((x) => x.name === cfg.image);
      if (!img) p.push("image " + cfg.image + " does not exist");
      else add(fileProblem(img.rootfs, "root file system"));
    }
    return p;
  }

  function renderBoot() {
    if (!S.configs) return;
    let body = $("configs-table").tBodies[0];
    clear(body);
    for (const c of S.configs.boot_configs) {
      const tr = el("tr");
      tr.appendChild(td(c.name));
      tr.appendChild(td(S.configs.default === c.name ? "default" : ""));
      tr.appendChild(td(fileName(c.kernel)));
      tr.appendChild(td(fileName(c.initramfs)));
      tr.appendChild(td(c.image || ""));
      tr.appendChild(td(c.cmdline));
      tr.appendChild(td(configProblems(c).join("; "), "c-problems"));
      body.appendChild(tr);
    }
    body = $("images-table").tBodies[0];
    clear(body);
    for (const i of S.images.images) {
      const tr = el("tr");
      tr.appendChild(td(i.name));
      tr.appendChild(td(fileName(i.rootfs)));
      tr.appendChild(td(i.extra_files.map(fileName).join(", ")));
      tr.appendChild(td(i.description));
      body.appendChild(tr);
    }
    // Files: one column per head with that head's verification state of each file.
    const head = $("files-table").tHead.rows[0];
    clear(head);
    for (const t of ["Name", "Kind", "Size", "SHA-256", "Copies"]) head.appendChild(el("th", null, t));
    for (const h of S.heads) head.appendChild(el("th", null, h.name));
    body = $("files-table").tBodies[0];
    clear(body);
    for (const f of S.files.files) {
      const tr = el("tr");
      tr.appendChild(td(f.name));
      tr.appendChild(td(f.kind));
      tr.appendChild(td(bytes(f.size), "num"));
      tr.appendChild(td(f.sha256.slice(0, 16) + "…"));
      const c = S.files.copies && S.files.copies[f.id];
      const n = c ? c.copies : 0;
      tr.appendChild(td(n + (c && c.under_minimum ? " (under the minimum " + S.files.min_copies + ")" : ""), "num"));
      for (const h of S.heads) {
        let state;
        let cls;
        if (!h.storage) {
          state = "not audited";
          cls = "";
        } else if (h.storage.held.includes(f.id)) {
          state = "verified";
          cls = "yes";
        } else {
          state = "missing";
          cls = "no";
        }
        if (!h.alive) state += " (head down; at its last audit)";
        tr.appendChild(td(state, cls));
      }
      body.appendChild(tr);
    }
  }

  // ---------- nodes ----------
  const loadNodes = loader(async () => {
    const l = await api("GET", "/nodes");
    S.nodes = new Map(l.nodes.map((n) => [n.uid, n]));
    for (const u of S.selected) if (!S.nodes.has(u)) S.selected.delete(u);
    if ($("filter").value.trim()) await applyFilter();
    rebuild();
  }, () => Math.min(5000, S.nodes.size / 5));
  // With thousands of nodes, status changes all the time: at most one refetch every
  // nodes/5 ms (2 s for 10,000), right away for small clusters.
  const bigGap = () => Math.min(5000, S.nodes.size / 5);
  const loadStatus = loader(async () => {
    const l = await api("POST", "/nodes/status", {});
    S.status = new Map(l.nodes.map((n) => [n.uid, n]));
    rebuild();
  }, bigGap);

  function hardware(h) {
    if (!h) return "";
    const parts = [h.cpus + " CPU", bytes(h.mem_total_kib * 1024)];
    if (h.product) parts.push(h.product);
    return parts.join(", ");
  }

  function rowOf(n) {
    const st = S.status.get(n.uid);
    const named = n.attributes._boot_config;
    const bc = named || (S.configs && S.configs.default) || "";
    const cfg = S.configs && S.configs.boot_configs.find((c) => c.name === bc);
    const problems = st ? st.problems.slice() : [];
    if (!bc && S.configs) problems.push("no boot config: the node has no _boot_config and there is no default");
    if (cfg) problems.push(...configProblems(cfg));
    return {
      uid: n.uid,
      name: n.name,
      state: st ? st.state : "new",
      parent: (st && st.parent) || "",
      seen: (st && st.last_seen) || 0,
      boot: bc + (named || !bc ? "" : " (default)"),
      image: (cfg && cfg.image) || "",
      hw: hardware(st && st.hardware),
      problems: problems.join("; "),
    };
  }

  function compare(key, dir) {
    if (key === "seen") return (a, b) => dir * (a.seen - b.seen) || collator.compare(a.name, b.name);
    return (a, b) => dir * collator.compare(a[key], b[key]) || collator.compare(a.name, b.name);
  }

  function rebuild() {
    const rows = new Map();
    for (const n of S.nodes.values()) rows.set(n.uid, rowOf(n));
    S.rows = rows;
    let list = [...rows.values()];
    if (S.filter) list = list.filter((r) => S.filter.has(r.uid));
    list.sort(compare(S.sort.key, S.sort.dir));
    S.view = list.map((r) => r.uid);
    $("node-count").textContent = S.view.length === rows.size
      ? rows.size + " nodes"
      : S.view.length + " of " + rows.size + " nodes";
    renderRows();
    if (S.detail) showDetail(S.detail);
  }

  // Virtual scrolling: only the visible rows exist in the page; they are reused as it scrolls.
  const scroller = $("nodes-scroll");
  const rowsEl = $("nodes-rows");
  const pool = [];

  function makeRow() {
    const r = el("div", "row");
    const sel = el("span", "c-sel");
    const box = el("input");
    box.type = "checkbox";
    box.addEventListener("click", (ev) => {
      ev.stopPropagation();
      const uid = r.dataset.uid;
      if (box.checked) S.selected.add(uid);
      else S.selected.delete(uid);
      r.classList.toggle("selected", box.checked);
      $("sel-count").textContent = S.selected.size;
    });
    sel.appendChild(box);
    r.appendChild(sel);
    const cells = {};
    for (const c of ["name", "state", "parent", "seen", "boot", "image", "hw", "problems"]) {
      cells[c] = el("span", "c-" + c);
      r.appendChild(cells[c]);
    }
    r.addEventListener("click", () => showDetail(r.dataset.uid));
    rowsEl.appendChild(r);
    return { el: r, box, cells };
  }

  function fill(p, row) {
    p.el.dataset.uid = row.uid;
    p.el.dataset.name = row.name;
    p.box.checked = S.selected.has(row.uid);
    p.el.classList.toggle("selected", p.box.checked);
    p.cells.name.textContent = row.name;
    p.cells.state.textContent = row.state;
    p.cells.state.className = "c-state state-" + row.state;
    p.cells.parent.textContent = row.parent;
    p.cells.seen.textContent = when(row.seen);
    p.cells.boot.textContent = row.boot;
    p.cells.image.textContent = row.image;
    p.cells.hw.textContent = row.hw;
    p.cells.problems.textContent = row.problems;
    p.cells.problems.title = row.problems;
  }

  function renderRows() {
    if (S.tab !== "nodes") return;
    const n = S.view.length;
    $("nodes-spacer").style.height = n * ROW_H + "px";
    const first = Math.max(0, Math.floor(scroller.scrollTop / ROW_H) - OVERSCAN);
    const count = Math.max(0, Math.min(n - first, Math.ceil(scroller.clientHeight / ROW_H) + 2 * OVERSCAN));
    rowsEl.style.transform = "translateY(" + first * ROW_H + "px)";
    while (pool.length < count) pool.push(makeRow());
    for (let i = 0; i < pool.length; i++) {
      const p = pool[i];
      if (i < count) {
        fill(p, S.rows.get(S.view[first + i]));
        p.el.hidden = false;
      } else {
        p.el.hidden = true;
      }
    }
    $("sel-count").textContent = S.selected.size;
    S.rendered += 1;
  }
  let scrollQueued = false;
  scroller.addEventListener("scroll", () => {
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      renderRows();
    });
  });
  window.addEventListener("resize", () => renderRows());

  for (const h of document.querySelectorAll("#nodes-head .sortable")) {
    h.addEventListener("click", () => {
      const key = h.dataset.sort;
      S.sort = { key, dir: S.sort.key === key ? -S.sort.dir : 1 };
      for (const o of document.querySelectorAll("#nodes-head .sortable")) o.classList.remove("asc", "desc");
      h.classList.add(S.sort.dir > 0 ? "asc" : "desc");
      rebuild();
    });
  }

  // The filter: the server's selector parser (the CLIs' `-i`), through GET /nodes?select=.
  let filterTimer = null;
  async function applyFilter() {
    const sel = $("filter").value.trim();
    if (!sel) {
      S.filter = null;
      $("filter-error").textContent = "";
      return;
    }
    try {
      const l = await api("GET", "/nodes?select=" + encodeURIComponent(sel));
      if ($("filter").value.trim() !== sel) return; // typed on meanwhile
      S.filter = new Set(l.nodes.map((n) => n.uid));
      $("filter-error").textContent = "";
    } catch (e) {
      if (e instanceof AuthError) return;
      $("filter-error").textContent = e.message;
    }
  }
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(async () => {
      await applyFilter();
      rebuild();
    }, 250);
  });
  $("select-shown").addEventListener("click", () => {
    for (const u of S.view) S.selected.add(u);
    renderRows();
  });
  $("select-none").addEventListener("click", () => {
    S.selected.clear();
    renderRows();
  });

  function showDetail(uid) {
    const n = S.nodes.get(uid);
    if (!n) {
      $("node-detail").hidden = true;
      S.detail = null;
      return;
    }
    S.detail = uid;
    const st = S.status.get(uid);
    const row = S.rows.get(uid) || rowOf(n);
    $("detail-name").textContent = n.name;
    const dl = $("detail-list");
    clear(dl);
    const add = (k, v) => {
      if (v === undefined || v === null || v === "") return;
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, v));
    };
    add("UID", n.uid);
    add("Index", n.index);
    add("MAC", n.macs.join(", "));
    add("IP", n.ip);
    add("State", row.state);
    add("Parent", row.parent);
    add("Last seen", when(row.seen));
    add("Boot id", st && st.boot_id);
    add("Boot config", row.boot);
    add("Image", row.image);
    add("Problems", row.problems);
    const h = st && st.hardware;
    if (h) {
      add("CPU", h.cpus + " × " + h.cpu_model);
      add("Memory", bytes(h.mem_total_kib * 1024));
      add("System", [h.vendor, h.product].filter(Boolean).join(" "));
      for (const d of h.disks || []) add("Disk " + d.name, bytes(d.bytes));
    }
    for (const [k, v] of Object.entries(n.attributes)) add("Attribute " + k, v);
    $("node-detail").hidden = false;
  }
  $("detail-close").addEventListener("click", () => {
    S.detail = null;
    $("node-detail").hidden = true;
  });

  // ---------- actions ----------
  function confirmAction(text) {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.returnValue = "";
      d.showModal();
    });
  }

  function selectedNames() {
    return [...S.selected].map((u) => (S.nodes.get(u) || { name: u }).name);
  }

  function outcomeText(what, results) {
    const ok = results.filter((r) => r.outcome === "ok");
    const bad = results.filter((r) => r.outcome !== "ok");
    let t = what + ": " + ok.length + " ok";
    if (ok.length) {
      const pw = ok.filter((r) => r.power);
      t += " (" + (pw.length ? pw.map((r) => r.name + " " + r.power).join(", ") : compress(ok.map((r) => r.name))) + ")";
    }
    for (const r of bad) t += "\n" + r.name + ": " + r.outcome + (r.message ? ": " + r.message : "");
    return t;
  }

  for (const b of document.querySelectorAll("button.power")) {
    b.addEventListener("click", async () => {
      const action = b.dataset.power;
      if (S.selected.size === 0) return say("Select nodes first (the boxes at the left of the rows).", true);
      const names = selectedNames();
      if (!(await confirmAction("Power " + action + " " + names.length + " node(s): " + compress(names) + "?"))) {
        return say("Power " + action + " cancelled.");
      }
      say("Power " + action + " of " + compress(names) + "…");
      try {
        const r = await api("POST", "/nodes/power", { nodes: [...S.selected], action, timeout_secs: 60 });
        say(outcomeText("power " + action, r.results), r.results.some((x) => x.outcome !== "ok"));
      } catch (e) {
        if (!(e instanceof AuthError)) say("Power " + action + " failed: " + e.message, true);
      }
    });
  }

  for (const b of document.querySelectorAll("button.script")) {
    b.addEventListener("click", async () => {
      const script = b.dataset.script;
      if (S.selected.size === 0) return say("Select nodes first (the boxes at the left of the rows).", true);
      const names = selectedNames();
      if (!(await confirmAction("Run " + script + " on " + names.length + " node(s): " + compress(names) + "?"))) {
        return say(script + " cancelled.");
      }
      say("Running " + script + " on " + compress(names) + "…");
      try {
        const r = await api("POST", "/nodes/script", { nodes: [...S.selected], script, timeout_secs: 60 });
        say(outcomeText(script, r.results), r.results.some((x) => x.outcome !== "ok"));
      } catch (e) {
        if (!(e instanceof AuthError)) say(script + " failed: " + e.message, true);
      }
    });
  }

  $("rebalance").addEventListener("click", async () => {
    if (!(await confirmAction("Rebalance now: move nodes from heads that parent too many to the others?"))) return;
    try {
      const r = await api("POST", "/rebalance", { dry_run: false });
      let t = "Rebalance: " + r.moves.length + " move(s)" + (r.executed ? " handed to the nodes" : "");
      for (const n of r.notes || []) t += "\n" + n;
      say(t);
    } catch (e) {
      if (!(e instanceof AuthError)) say("Rebalance failed: " + e.message, true);
    }
  });

  $("failover-reset").addEventListener("click", async () => {
    if (!(await confirmAction("Reset failover, so that a failed head can be ejected automatically again?"))) return;
    try {
      await api("POST", "/cluster/failover", { action: "reset" });
      say("Failover reset: armed again.");
      loadHeads();
    } catch (e) {
      if (!(e instanceof AuthError)) say("Failover reset failed: " + e.message, true);
    }
  });

  // ---------- live updates ----------
  function setLive(on, text) {
    const l = $("live");
    l.classList.toggle("on", on);
    l.classList.toggle("off", !on);
    l.textContent = text;
  }

  function handleEvent(chunk) {
    let name = "message";
    let data = "";
    for (const line of chunk.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (name === "ready") {
      let head = "";
      try {
        head = JSON.parse(data).head;
      } catch (_) {
        head = "";
      }
      setLive(true, "live");
      $("served-by").textContent = "served by " + head;
      refreshAll(); // whatever changed while the stream was down
    } else if (name === "change") {
      let topics = [];
      try {
        topics = JSON.parse(data);
      } catch (_) {
        topics = [];
      }
      if (topics.includes("heads")) {
        loadHeads();
        if (S.tab === "boot") loadBoot();
      }
      if (topics.includes("nodes")) loadNodes();
      if (topics.includes("status")) loadStatus();
    }
  }

  // EventSource cannot send the Authorization header: fetch() and a stream reader instead.
  async function live() {
    if (stream) stream.abort();
    const ctl = new AbortController();
    stream = ctl;
    while (token && !ctl.signal.aborted) {
      try {
        const r = await fetch(API + "/console/updates", {
          headers: { Authorization: "Bearer " + token },
          signal: ctl.signal,
          cache: "no-store",
        });
        if (r.status === 401 || r.status === 403) {
          logout("Logged out: the token is no longer accepted.");
          return;
        }
        if (!r.ok) {
          let msg = "HTTP " + r.status;
          try {
            msg = (await r.json()).message || msg;
          } catch (_) {
            // keep the status
          }
          setLive(false, "no live updates: " + msg);
          await sleep(5000);
          continue;
        }
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            handleEvent(chunk);
          }
          if (buf.length > 65536) buf = ""; // not an event stream
        }
      } catch (_) {
        if (ctl.signal.aborted) return;
      }
      setLive(false, "reconnecting");
      await sleep(1000 + Math.random() * 1000);
    }
  }

  // ---------- start ----------
  if (token) tryToken(token);
  else showLogin("");
})();
