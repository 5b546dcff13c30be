// hookgate console: keys, clickable rows, the live tail, and refreshing
// an event's page while its deliveries are pending. Everything works
// without it but the tail.
"use strict";

(function () {
  const typing = (el) => el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));

  // Rows open their event on click (not on a link, button or checkbox).
  document.addEventListener("click", (ev) => {
    const row = ev.target.closest("tr[data-href]");
    if (!row || ev.target.closest("a, button, input, label, summary")) return;
    location.href = row.dataset.href;
  });

  // Select all on the dead-letter page.
  document.addEventListener("change", (ev) => {
    if (!ev.target.matches("[data-select-all]")) return;
    for (const box of document.querySelectorAll("input[name=ids]")) box.checked = ev.target.checked;
  });

  // Keys: / search, j/k move, Enter open, g + e/d/s/t go.
  let cursor = -1;
  let pendingG = false;
  const rows = () => Array.from(document.querySelectorAll("tr[data-href]"));
  const move = (by) => {
    const all = rows();
    if (!all.length) return;
    if (cursor >= 0 && all[cursor]) all[cursor].classList.remove("cursor");
    cursor = Math.max(0, Math.min(all.length - 1, cursor + by));
    all[cursor].classList.add("cursor");
    all[cursor].scrollIntoView({ block: "nearest" });
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(document.activeElement)) return;
    if (pendingG) {
      pendingG = false;
      const to = { e: "/", d: "/dead", s: "/sinks", t: "/tail" }[ev.key];
      if (to) { ev.preventDefault(); location.href = to; }
      return;
    }
    if (ev.key === "/") {
      const search = document.querySelector("[data-search]");
      if (search) { ev.preventDefault(); search.focus(); search.select(); }
    } else if (ev.key === "j") {
      move(1);
    } else if (ev.key === "k") {
      move(-1);
    } else if (ev.key === "Enter" && cursor >= 0) {
      const row = rows()[cursor];
      if (row) location.href = row.dataset.href;
    } else if (ev.key === "g") {
      pendingG = true;
    }
  });

  // An event's page: while a delivery is pending, look every 2 s and
  // reload when a delivery's state or attempts changed.
  const body = document.body;
  if (body.dataset.pending === "1" && body.dataset.event) {
    const look = async () => {
      if (document.visibilityState === "visible") {
        try {
          const r = await fetch("/api/events/" + body.dataset.event, { credentials: "same-origin" });
          if (r.ok) {
            const e = await r.json();
            const states = e.deliveries.map((d) => {
              const s = d.status.charAt(0).toUpperCase() + d.status.slice(1);
              return d.id + ":" + s + ":" + d.attempts.length;
            }).join(",");
            if (states !== body.dataset.states) { location.reload(); return; }
          }
        } catch (_) { /* the daemon is restarting: look again */ }
      }
      setTimeout(look, 2000);
    };
    setTimeout(look, 2000);
  }

  // The live tail: new events every 1.5 s, newest on top.
  if (body.dataset.tail === "1") {
    const tbody = document.getElementById("tail-rows");
    const state = document.getElementById("tail-state");
    const toggle = document.getElementById("tail-toggle");
    let newest = 0;
    let paused = false;
    const cell = (tr, text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    };
    const poll = async () => {
      if (!paused) {
        try {
          const r = await fetch("/api/events?limit=100", { credentials: "same-origin" });
          if (!r.ok) throw new Error("HTTP " + r.status);
          const page = await r.json();
          const fresh = page.items.filter((e) => e.id > newest).reverse();
          for (const e of fresh) {
            const tr = document.createElement("tr");
            tr.dataset.href = "/events/" + e.id;
            cell(tr, e.received_at.slice(0, 19).replace("T", " "));
            cell(tr, e.source);
            cell(tr, e.event);
            cell(tr, e.delivery_id || "(none)", "mono");
            tbody.insertBefore(tr, tbody.firstChild);
            newest = Math.max(newest, e.id);
          }
          while (tbody.children.length > 500) tbody.removeChild(tbody.lastChild);
          state.textContent = "Live: checked " + new Date().toLocaleTimeString() + ".";
        } catch (err) {
          state.textContent = "Cannot reach the daemon (" + err.message + "); trying again.";
        }
      }
      setTimeout(poll, 1500);
    };
    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      state.textContent = paused ? "Paused." : "Resuming…";
    });
    poll();
  }
})();
