// pacslb WebUI: live System Overview (polls /api/v1/status every 2 s) and in-place admin buttons.
// No libraries: hospital networks are often offline, and this is all the page needs.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // The word beside each colour (webui.STATE_WORDS): colour alone is not enough.
  const WORDS = { up: "up", down: "down", drain: "drain", halt: "halt", unknown: "not checked",
    partial: "some down" };

  function colour(rs) {
    if (rs.admin === "halt") return "halt";
    if (rs.health === "down") return "down";
    if (rs.admin === "drain" || rs.admin === "removing") return "drain";
    return rs.health === "up" ? "up" : "unknown";
  }

  // Only the actions that change something: no Drain on a drained server.
  function buttons(row, admin) {
    const cell = row.querySelector("td.actions");
    if (!cell || cell.dataset.admin === admin) return;
    cell.dataset.admin = admin;
    for (const f of cell.querySelectorAll("form.admin-form")) {
      f.hidden = f.dataset.action === admin || admin === "removing";
    }
  }

  function say(text) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
  }

  function serviceColour(colours) {  // webui.service_colour
    if (!colours.some((c) => c === "up" || c === "unknown")) return "down";
    return colours.some((c) => c === "down" || c === "unknown") ? "partial" : "up";
  }

  function paint(row, value) {
    const dot = row.querySelector('[data-role="colour"]');
    if (!dot) return;
    dot.className = "dot h-" + value;
    dot.title = WORDS[value] || value;
    row.querySelector('[data-role="colour-text"]').textContent = WORDS[value] || value;
    row.dataset.colour = value;
  }

  function set(row, role, text) {
    const cell = row.querySelector('[data-role="' + role + '"]');
    if (cell && cell.textContent !== String(text)) cell.textContent = text;
  }

  function update(status) {
    for (const svc of status.services) {
      const body = document.querySelector('tbody.service[data-service="' + CSS.escape(svc.label) + '"]');
      if (!body) { location.reload(); return; }  // the config changed elsewhere: redraw
      const colours = [];
      let active = 0;
      for (const rs of svc.real_servers) {
        const row = body.querySelector('tr.rip[data-server="' + CSS.escape(rs.label) + '"]');
        if (!row) { location.reload(); return; }
        const c = colour(rs);
        colours.push(c);
        const conns = rs.connections ? rs.connections.active : 0;
        active += conns;
        paint(row, c);
        buttons(row, rs.admin);
        set(row, "conns", conns);
        if (rs.dicom) set(row, "assoc", rs.dicom.assoc_active + " assoc" + (rs.admin === "drain" ? " held" : ""));
        set(row, "weight", rs.effective_weight + "/" + rs.weight);
        set(row, "check", rs.last_check ? rs.last_check.reason : "not checked yet");
      }
      const vip = body.querySelector("tr.vip");
      paint(vip, serviceColour(colours));
      set(vip, "conns", active);
      if (svc.dicom) {
        const t = svc.dicom.total;
        set(vip, "assoc", t.assoc_active + " assoc · " + t.associations + " opened · " + t.assoc_rejected + " rejected · " + t.assoc_aborted + " aborted");
      }
    }
    readiness(status);
    const rev = document.getElementById("revision");
    if (rev) rev.textContent = status.revision;
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = "updated " + new Date().toLocaleString();
  }

  // The red banner: shown while status says not ready or degraded, naming each reason.
  function readiness(status) {
    const banner = document.getElementById("readiness");
    if (!banner) return;
    const notReady = status.not_ready || [], degraded = status.degraded || [];
    const reasons = notReady.map((r) => "Not ready: " + r).concat(degraded.map((r) => "Degraded: " + r));
    banner.hidden = reasons.length === 0;
    // The words are the template's (data- attributes), written in one place.
    banner.querySelector('[data-role="headline"]').textContent = notReady.length
      ? banner.dataset.notReady
      : banner.dataset.degraded;
    const list = banner.querySelector('[data-role="reasons"]');
    if (Array.from(list.children, (li) => li.textContent).join("\n") !== reasons.join("\n")) {
      list.replaceChildren(...reasons.map((r) => Object.assign(document.createElement("li"), { textContent: r })));
    }
  }

  async function poll() {
    try {
      const r = await fetch("/api/v1/status", { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) { location.href = "/login?next=/"; return; }
      if (r.ok) update(await r.json());
    } catch (e) { /* the next poll tries again */ }
  }

  async function adminAction(event) {
    event.preventDefault();
    const f = event.target;
    const url = "/api/v1/virtual_services/" + encodeURIComponent(f.service.value) +
      "/real_servers/" + encodeURIComponent(f.server.value) + "/" + f.action.value;
    const r = await fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf() } });
    if (!r.ok) {
      // The API's refusals name their reason in "detail" (a passive HA node names the active one)
      const text = await r.text();
      let why = text;
      try { why = JSON.parse(text).detail || text; } catch (e) { /* not JSON: as it came */ }
      alert("Refused: " + why);
    } else {
      const done = { drain: "is draining: no new connections, open ones finish.",
        halt: "is halted: no traffic at all.", online: "is online." }[f.action.value];
      say(f.server.value + " of " + f.service.value + " " + done);
    }
    poll();
  }

  // The service form shows the fields of the chosen check only (AE titles for dicom-echo).
  function checkFields() {
    const kind = document.getElementById("f-health_check.type");
    if (!kind) return;
    const show = () => {
      for (const box of document.querySelectorAll("[data-check]")) box.hidden = box.dataset.check !== kind.value;
    };
    kind.addEventListener("change", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", () => {
    checkFields();
    if (document.getElementById("overview")) {
      for (const f of document.querySelectorAll("form.admin-form")) f.addEventListener("submit", adminAction);
      setInterval(poll, 2000);
    }
  });
})();
