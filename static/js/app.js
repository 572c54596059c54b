// Optideck's only script (htmx does the rest): upload progress, confirmations, live status.
document.addEventListener("htmx:xhr:progress", (event) => {
  const form = event.target.closest("#upload-form");
  if (!form || !event.detail.lengthComputable) return;
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const percent = Math.round((100 * event.detail.loaded) / event.detail.total);
  bar.hidden = false;
  bar.value = percent;
  status.textContent = percent < 100 ? `Uploading… ${percent} %` : "Uploaded; analysing the model…";
});

// A refused upload keeps its form (only the error boxes change): say so where the progress
// was, and take the reader to the first reason.
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.target.closest && event.target.closest("#upload-form");
  if (!form || event.detail.xhr.status < 400) return;
  document.getElementById("upload-progress").hidden = true;
  const status = document.getElementById("upload-status");
  const reason = form.querySelector(".form-error, .error");
  if (reason) {
    status.textContent = "Not uploaded; the reason is beside its field. Your files are still chosen.";
    reason.scrollIntoView({ block: "center" });
  } else if (event.detail.xhr.status === 413) {
    // Refused before the form was read (its size): no field has a reason to show.
    status.textContent = "Not uploaded: the files are larger than this server accepts.";
  } else {
    status.textContent = `Not uploaded (HTTP ${event.detail.xhr.status}): reload the page and try again.`;
  }
});

// Forms that cannot be undone (delete a model, cancel a session, deactivate a user,
// restore criteria) ask first; their data-confirm says what will happen.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// The criteria form says "Unsaved changes" from the first edit until it is saved.
document.addEventListener("input", (event) => {
  const form = event.target.closest("#criteria-form");
  const marker = form && form.querySelector(".unsaved");
  if (marker) marker.hidden = false;
});

// The sessions list's filter form follows the URL: a header sort, Back and Forward change
// the URL and the list but not the form (htmx restores Back from a snapshot of the page
// as first rendered), and the next filter change would otherwise send stale boxes.
// The control being typed in is left alone.
function syncFilters() {
  const form = document.querySelector("form.filters");
  if (!form) return;
  const params = new URLSearchParams(window.location.search);
  for (const control of form.elements) {
    if (!control.name || control === document.activeElement) continue;
    if (control.type === "checkbox") {
      control.checked = params.getAll(control.name).includes(control.value);
    } else if (control.tagName === "SELECT") {
      const wanted = params.get(control.name);
      const option = [...control.options].find((o) => o.value === wanted);
      control.selectedIndex = option ? option.index : 0;
    } else if (control.tagName === "INPUT" && control.type !== "submit") {
      control.value = params.get(control.name) || "";
    }
  }
}
document.addEventListener("htmx:historyRestore", syncFilters);
// The filter form leaves out what is empty or at its default (a select's first option), so
// the pushed URL is the same short link a header sort or the pager gives.
document.addEventListener("htmx:configRequest", (event) => {
  const form = event.detail.elt;
  if (!form.matches || !form.matches("form.filters")) return;
  for (const control of form.elements) {
    if (!control.name || control.type === "checkbox") continue;
    const atDefault = control.tagName === "SELECT" && control.selectedIndex === 0;
    if (atDefault || control.value === "") delete event.detail.parameters[control.name];
  }
});
document.addEventListener("htmx:afterSettle", (event) => {
  if (event.target.id === "session-list") syncFilters();
});

// The sessions list re-reads itself when the server says a session changed: at most once a
// second (a running session reports often, and the last change must not wait for a quiet
// moment), and not while focus is inside the list, where a swap would lose the reader's place.
let listTimer = null;
let listDue = false;
function refreshList() {
  const list = document.getElementById("session-list");
  if (!list) return;
  if (listTimer || list.contains(document.activeElement)) {
    listDue = true;
    if (!listTimer) listTimer = setTimeout(listTick, 1000);
    return;
  }
  htmx.ajax("GET", window.location.pathname + window.location.search, {
    target: "#session-list",
    swap: "outerHTML",
  });
  listTimer = setTimeout(listTick, 1000);
}
function listTick() {
  listTimer = null;
  if (listDue) {
    listDue = false;
    refreshList();
  }
}
document.addEventListener("htmx:oobAfterSwap", (event) => {
  if (event.detail.target && event.detail.target.id === "sessions-changed") refreshList();
});

// Reconnect with exponential backoff and jitter, capped at 10 s: the extension's own
// default can leave a page waiting a minute after a restart.
htmx.config.wsReconnectDelay = (retry) =>
  Math.min(500 * 2 ** retry, 10000) * (0.5 + Math.random() / 2);

// The header's connection indicator follows the htmx ws extension's events:
// live, reconnecting after a drop, offline once several attempts have failed.
let failedAttempts = 0;
function showLive(state, text) {
  const badge = document.getElementById("live-status");
  if (!badge) return;
  badge.className = `live-status ${state}`;
  badge.dataset.state = state;
  badge.textContent = text;
}
document.addEventListener("htmx:wsConnecting", () => {
  if (failedAttempts === 0) showLive("reconnecting", "● connecting…");
});
document.addEventListener("htmx:wsOpen", () => {
  failedAttempts = 0;
  showLive("connected", "● live");
});
document.addEventListener("htmx:wsClose", (event) => {
  // 1008: the server ended or refused this page's stream (signed out, too many open
  // tabs); the extension does not reconnect after it, so do not promise to.
  if (event.detail.event.code === 1008) {
    showLive("offline", "● not live, reload the page");
    return;
  }
  failedAttempts += 1;
  if (failedAttempts >= 3 || !navigator.onLine) showLive("offline", "● offline, retrying…");
  else showLive("reconnecting", "● reconnecting…");
});
