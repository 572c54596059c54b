// Optideck's only script: upload progress for the model form (htmx does the rest).
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

// The criteria form says "Unsaved changes" from the first edit until it is saved.
document.addEventListener("input", (event) => {
  const form = event.target.closest("#criteria-form");
  const marker = form && form.querySelector(".unsaved");
  if (marker) marker.hidden = false;
});

// The header's connection indicator follows the htmx ws extension's events.
function showLive(state, text) {
  const badge = document.getElementById("live-status");
  if (!badge) return;
  badge.className = `live-status ${state}`;
  badge.textContent = text;
}
document.addEventListener("htmx:wsConnecting", () => showLive("reconnecting", "● connecting…"));
document.addEventListener("htmx:wsOpen", () => showLive("connected", "● live"));
document.addEventListener("htmx:wsClose", () => showLive("offline", "● offline, reconnecting…"));
document.addEventListener("htmx:wsError", () => showLive("offline", "● offline, reconnecting…"));
