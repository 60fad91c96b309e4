// agent-tasks console: the few behaviours a server-rendered page cannot have on its own.
// Plain browser APIs only (EventSource, fetch streams, DOMParser): forms work without this file,
// and no markup that came from a message is ever inserted except the server's sanitised HTML.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  let streaming = false;

  // --- confirmations and small form helpers --------------------------------------------
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    // data-confirm-if: ask only when the form's action select has that value (bulk delete)
    const asks = form.dataset && form.dataset.confirm
      && (!form.dataset.confirmIf || (form.elements.action && form.elements.action.value === form.dataset.confirmIf));
    if (asks && !window.confirm(form.dataset.confirm)) ev.preventDefault();
  });
  // the schedule list's "All on this page" box ticks every row's box (they belong to form#bulk)
  document.addEventListener("change", (ev) => {
    if (ev.target.id === "select-all") $$("input.pick").forEach((box) => { box.checked = ev.target.checked; });
  });
  $$("select[data-autosubmit]").forEach((s) => s.addEventListener("change", () => s.form.submit()));

  // Alt+Shift+N: a new conversation (browsers do not reserve it)
  document.addEventListener("keydown", (ev) => {
    if (ev.altKey && ev.shiftKey && !ev.ctrlKey && !ev.metaKey && ev.code === "KeyN") {
      const button = $("#new-conversation");
      if (button) { ev.preventDefault(); button.form.submit(); }
    }
  });

  // --- unread badge ---------------------------------------------------------------------
  async function refreshUnread() {
    const badge = $("#unread");
    if (!badge) return;
    const res = await fetch(badge.dataset.countUrl, { headers: { accept: "application/json" } });
    if (!res.ok) return;
    const { unread } = await res.json();
    badge.textContent = unread > 0 ? String(unread) : "";
    badge.dataset.unread = String(unread);
  }

  // --- live regions: re-read the page and swap the region (rendered under the user's RLS) ----
  // Events coalesce for 150 ms per region. Re-reads can overlap (an event arrives while one is in
  // flight): only the latest one started may swap, and it swaps whatever element holds the
  // region's id by then. Swapping the element captured when the event came lost the newer
  // re-read whenever an older one had swapped first (its target was already detached).
  const pending = new Map();
  const started = new Map();
  function refreshRegion(region) {
    const id = region.id;
    if (pending.has(id)) return;
    pending.set(id, setTimeout(async () => {
      pending.delete(id);
      const seq = (started.get(id) || 0) + 1;
      started.set(id, seq);
      const res = await fetch(location.pathname + location.search, { headers: { "x-live": "1" } });
      if (!res.ok || started.get(id) !== seq) return;  // a later re-read has newer rows
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      if (started.get(id) !== seq) return;
      const fresh = doc.getElementById(id);
      const current = document.getElementById(id);
      if (!fresh || !current) return;
      // boxes the user ticked stay ticked across the re-read (the schedule list's bulk selection)
      const ticked = new Set($$("input.pick:checked", current).map((box) => box.value));
      const next = document.importNode(fresh, true);
      $$("input.pick", next).forEach((box) => { box.checked = ticked.has(box.value); });
      current.replaceWith(next);
    }, 150));
  }

  // --- chat -------------------------------------------------------------------------------
  const chat = $("#chat");
  const list = $("#messages");

  function lastCursor() {
    const items = $$("article.msg[data-cursor]", list);
    return items.length ? items[items.length - 1].dataset.cursor : "";
  }

  function scrollDown() { list.scrollTop = list.scrollHeight; }

  async function appendNew() {
    if (!chat) return;
    const url = `/c/${chat.dataset.conversation}/messages?after=${encodeURIComponent(lastCursor())}`;
    const res = await fetch(url);
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    let added = false;
    $$("article.msg", doc.body).forEach((m) => {
      if (!$(`article.msg[data-id="${m.dataset.id}"]`, list)) { list.appendChild(document.importNode(m, true)); added = true; }
    });
    if (added) scrollDown();
  }

  async function loadOlder(sentinel, observer) {
    observer.unobserve(sentinel);
    const url = `${sentinel.dataset.url}?before=${encodeURIComponent(sentinel.dataset.cursor)}`;
    const res = await fetch(url);
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const before = list.scrollHeight;
    const nodes = Array.from(doc.body.children).map((n) => document.importNode(n, true));
    sentinel.replaceWith(...nodes);
    list.scrollTop += list.scrollHeight - before;
    const next = $("#older", list);
    if (next) observer.observe(next);
  }

  function parseSse(buffer, onEvent) {
    const blocks = buffer.split(/\r?\n\r?\n/);
    const rest = blocks.pop();
    for (const block of blocks) {
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
    return rest;
  }

  function bubble(role, text) {
    const el = document.createElement("article");
    el.className = `msg ${role} pending`;
    const body = document.createElement("div");
    body.className = "body";
    const p = document.createElement("p");
    p.className = "plain";
    p.textContent = text;
    body.appendChild(p);
    el.appendChild(body);
    list.appendChild(el);
    scrollDown();
    return el;
  }

  function toolLine(reply, call) {
    let tools = $(".tools", reply);
    if (!tools) { tools = document.createElement("div"); tools.className = "tools"; reply.prepend(tools); }
    const item = document.createElement("details");
    item.className = `tool ${call.status || "ok"}`;
    const summary = document.createElement("summary");
    summary.textContent = `using: ${call.name} — ${call.status === "error" ? "error" : "done"}`;
    const result = document.createElement("pre");
    result.className = "result";
    result.textContent = JSON.stringify(call.result, null, 2);
    item.append(summary, result);
    tools.appendChild(item);
  }

  async function send(text) {
    const error = $("#send-error");
    const typing = $("#typing");
    error.textContent = "";
    streaming = true;
    $("#send").disabled = true;
    typing.hidden = false;
    const mine = bubble("user", text);
    const reply = bubble("assistant", "");
    const replyText = $("p", reply);
    try {
      const res = await fetch(`/c/${chat.dataset.conversation}/send`, {
        method: "POST", headers: { "content-type": "application/json", accept: "text/event-stream" },
        // the browser's time zone: the agent reads "tomorrow at 9" in it
        body: JSON.stringify({ message: text, timezone: Intl.DateTimeFormat().resolvedOptions().timeZone }),
      });
      if (!res.ok || !(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
        let message = `the message was not sent (${res.status})`;
        try { message = (await res.json()).error.message || message; } catch (_) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let failed = null;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer = parseSse(buffer + decoder.decode(value, { stream: true }), (name, data) => {
          if (name === "delta") { replyText.textContent += data.content || ""; scrollDown(); }
          else if (name === "tool") toolLine(reply, data);
          else if (name === "error") failed = (data.error && data.error.message) || "the reply failed";
        });
      }
      if (failed) throw new Error(failed);
      mine.remove();
      reply.remove();
      await appendNew();
    } catch (err) {
      error.textContent = err.message;
      reply.remove();
      mine.classList.add("unsent");
      return false;
    } finally {
      streaming = false;
      typing.hidden = true;
      $("#send").disabled = false;
    }
    return true;
  }

  if (chat) {
    scrollDown();
    const textarea = $("#message");
    const counter = $("#counter");
    const limit = Number(textarea.dataset.limit);
    const count = () => {
      const n = textarea.value.length;
      counter.textContent = `${n.toLocaleString("en")} / ${limit.toLocaleString("en")}`;
      counter.classList.toggle("warn", n >= limit * 0.9);
      counter.classList.toggle("full", n >= limit);
    };
    textarea.addEventListener("input", count);
    textarea.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("#composer").requestSubmit(); }
    });
    $("#composer").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const text = textarea.value;
      if (!text.trim() || streaming) return;
      textarea.value = "";
      count();
      if (!(await send(text))) { textarea.value = text; count(); }
    });
    const sentinel = $("#older", list);
    if (sentinel && "IntersectionObserver" in window) {
      const observer = new IntersectionObserver((entries) => {
        entries.forEach((e) => { if (e.isIntersecting) loadOlder(e.target, observer); });
      }, { root: list });
      observer.observe(sentinel);
    }
  }

  // --- cron builder ---------------------------------------------------------------------------
  const form = $("#task-form");
  if (form) {
    const expr = $("#cron_expression");
    const preset = $("#cron_preset");
    const zone = $("#timezone");
    const showKind = () => {
      const kind = (form.querySelector("input[name=schedule_type]:checked") || {}).value;
      $$(".when", form).forEach((el) => { el.hidden = !el.classList.contains(`when-${kind}`); });
    };
    $$("input[name=schedule_type]", form).forEach((r) => r.addEventListener("change", showKind));
    showKind();
    let timer = null;
    const preview = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const res = await fetch(`/api/cron?expr=${encodeURIComponent(expr.value)}&tz=${encodeURIComponent(zone.value)}`);
        const data = await res.json();
        const errors = data.errors || {};
        $("#cron-error").textContent = errors.cron_expression || errors.timezone || "";
        $("#cron-words").textContent = data.description ? `${data.description} (${data.timezone})` : "";
        const next = $("#cron-next");
        next.replaceChildren(...(data.next || []).map((t) => {
          const li = document.createElement("li");
          li.textContent = t.replace("T", " ");
          return li;
        }));
      }, 200);
    };
    preset.addEventListener("change", () => { if (preset.value) { expr.value = preset.value; } expr.focus(); preview(); });
    const presetValues = Array.from(preset.options).map((o) => o.value);
    expr.addEventListener("input", () => {
      preset.value = presetValues.includes(expr.value.trim()) ? expr.value.trim() : "";
      preview();
    });
    zone.addEventListener("change", preview);
    preview();
    $$(".insert-var", form).forEach((b) => b.addEventListener("click", () => {
      const t = $("#prompt_template");
      const token = `{{${b.dataset.var}}}`;
      const at = t.selectionStart ?? t.value.length;
      t.value = t.value.slice(0, at) + token + t.value.slice(t.selectionEnd ?? at);
      t.focus();
    }));
  }

  // --- live events ----------------------------------------------------------------------------
  if (document.body.dataset.live) {
    const source = new EventSource("/events");
    // on every (re)connection: catch up with what changed between rendering the page and subscribing
    source.addEventListener("ready", () => {
      refreshUnread();
      if (chat && !streaming) appendNew();
      $$("[data-live-tables]").forEach(refreshRegion);
      document.body.dataset.liveReady = "1";
    });
    source.addEventListener("live", (ev) => {
      const event = JSON.parse(ev.data);
      if (event.t === "notifications") refreshUnread();
      if (chat && event.t === "chat_messages_v2" && event.c === chat.dataset.conversation && !streaming) appendNew();
      $$("[data-live-tables]").forEach((region) => {
        if (region.dataset.liveTables.split(" ").includes(event.t)) refreshRegion(region);
      });
    });
  }
})();
