// Paoding Edge console: live rollout updates (server-sent events) and token-gated actions.
"use strict";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderRollout(root, r) {
  const state = document.getElementById("state");
  state.textContent = r.state;
  state.className = "state-" + r.state;
  document.getElementById("reason").textContent = r.reason || "-";
  document.getElementById("updated").textContent =
    new Date(r.updated_at * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  const pct = Math.round(100 * r.failure_rate);
  document.getElementById("failed").textContent =
    r.failed + " of " + r.settled + " settled (" + pct + "%)";
  document.getElementById("shown").textContent = r.devices_shown + " shown";
  const waves = document.querySelector("#waves tbody");
  waves.replaceChildren(...r.waves.map((w) => {
    const tr = el("tr");
    tr.append(el("td", {}, String(w.wave)), el("td", {class: "n"}, String(w.devices)));
    const td = el("td");
    const outs = Object.keys(w.outcomes).sort();
    if (!outs.length) td.textContent = "not reached";
    for (const o of outs) {
      td.append(el("span", {class: "outcome-" + o}, w.outcomes[o] + " " + o), " ");
    }
    tr.append(td);
    return tr;
  }));
  const devices = document.querySelector("#devices tbody");
  devices.replaceChildren(...r.devices.map((d) => {
    const tr = el("tr", {"data-device": d.device_id});
    const a = el("a", {href: "/device/" + encodeURIComponent(d.device_id)}, d.device_id);
    const td = el("td");
    td.append(a);
    tr.append(td, el("td", {}, String(d.wave)),
      el("td", {class: "outcome outcome-" + d.outcome}, d.outcome), el("td", {}, d.reason || ""));
    return tr;
  }));
  root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
}

function liveRollout() {
  const root = document.getElementById("rollout");
  if (!root || root.dataset.live !== "yes" || !window.EventSource) return;
  const source = new EventSource(root.dataset.events);
  source.addEventListener("rollout", (ev) => renderRollout(root, JSON.parse(ev.data)));
  source.addEventListener("end", () => { source.close(); root.dataset.live = "ended"; });
}

function actions() {
  for (const form of document.querySelectorAll("form[data-action]")) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = form.querySelector(".action-result");
      const token = form.querySelector("input[name=token]").value;
      const fields = new FormData(form);
      fields.delete("token");  // sent as the header
      out.textContent = "…";
      try {
        const resp = await fetch(form.action, {
          method: "POST",
          headers: {"Accept": "application/json", "X-Paoding-Token": token},
          body: fields,
        });
        const body = await resp.json();
        out.textContent = body.message;
        const link = /(\/rollout\/[A-Za-z0-9_.-]+)$/.exec(body.message || "");
        if (body.ok && link) {
          out.append(" ", el("a", {href: link[1]}, "follow it"));
        }
        out.className = "action-result " + (body.ok ? "ok" : "error");
      } catch (err) {
        out.textContent = "no answer from the console: " + err;
        out.className = "action-result error";
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { liveRollout(); actions(); });
