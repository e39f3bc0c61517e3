// The specdiff page: submit a job, follow it (server-sent events, polling as a fallback), then play
// the audio, show the spectrogram PNG and draw the piano roll with a playhead. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const FAMILIES = ["Piano", "Chromatic perc.", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
  "Reed", "Pipe", "Synth lead", "Synth pad", "Synth FX", "Ethnic", "Percussive", "Sound FX"];

let info = null;      // GET /api/info
let current = null;   // { id, events: EventSource | null, timer }
let roll = null;      // { notes, duration, image: offscreen canvas }

// ---- helpers -----------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) {  // FastAPI's validation errors
        detail = body.detail.map((e) => `${e.loc[e.loc.length - 1]}: ${e.msg}`).join("; ");
      }
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
  if (message) clearResult();  // a new error: the previous job's result no longer answers it
}

function clearResult() {
  $("result").hidden = true;
  $("roll-panel").hidden = true;
  $("player").pause();
  $("player").removeAttribute("src");
}

function setState(state) {
  document.body.dataset.state = state;
}

function formatSeconds(s) {
  return s == null ? "?" : `${s.toFixed(1)} s`;
}

// ---- start-up ----------------------------------------------------------------------------------

async function init() {
  try {
    info = await (await api("/api/info")).json();
  } catch (err) {
    $("model-info").textContent = `cannot reach the server: ${err.message}`;
    return;
  }
  $("model-info").textContent = `model ${info.model} on ${info.device}, inverter ${info.inverter}`;
  $("steps").value = info.defaults.steps;
  $("steps").max = info.limits.max_steps;
  $("guidance").value = info.defaults.guidance;
  $("guidance").max = info.limits.max_guidance;
  for (const name of info.schedulers) {
    $("scheduler").add(new Option(name, name, false, name === info.defaults.scheduler));
  }
  const mib = (info.limits.max_upload_bytes / 1048576).toFixed(1);
  // The real retention: a result is dropped result_ttl after it is made, or fetched_ttl after it
  // is first fetched (playing it here fetches it), or earlier when the server's store is full.
  const minutes = (s) => (s >= 120 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);
  $("limits").textContent = `Up to ${mib} MiB and ${info.limits.max_midi_seconds} s of music. ` +
    `Results are kept for ${minutes(info.limits.result_ttl_s)}, or ${minutes(info.limits.fetched_ttl_s)} ` +
    `after they are first played or downloaded (the oldest go first when the server is full): ` +
    `download what you want to keep.`;
  if (info.examples.length === 0) {
    $("example-choice").hidden = true;
  } else {
    for (const e of info.examples) $("example").add(new Option(e.name, e.name));
  }
  for (const radio of document.querySelectorAll('input[name="source"]')) {
    radio.addEventListener("change", () => { showError(""); syncSource(); });
  }
  $("midi-file").addEventListener("change", () => {
    showError("");  // a new file: the previous file's refusal no longer applies
    if (document.body.dataset.state === "error") setState("ready");
    document.querySelector('input[name="source"][value="upload"]').checked = true;
    syncSource();
  });
  $("job-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("player").addEventListener("play", animatePlayhead);
  $("player").addEventListener("seeked", () => drawRoll($("player").currentTime));
  window.addEventListener("resize", () => roll && drawRoll($("player").currentTime));
  setState("ready");
}

function syncSource() {
  const example = document.querySelector('input[name="source"]:checked').value === "example";
  $("example").disabled = !example;
  $("midi-file").disabled = example;
}

// ---- a job -------------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  const source = document.querySelector('input[name="source"]:checked').value;
  if (source === "upload") {
    const file = $("midi-file").files[0];
    if (!file) return showError("Choose a MIDI file first (or pick an example).");
    if (info && file.size > info.limits.max_upload_bytes) {
      return showError(`${file.name} is ${file.size} bytes; the limit is ${info.limits.max_upload_bytes}.`);
    }
    form.append("midi", file, file.name);
  } else {
    form.append("example", $("example").value);
  }
  form.append("steps", $("steps").value);
  form.append("guidance", $("guidance").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  form.append("scheduler", $("scheduler").value);

  stopFollowing();
  clearResult();
  $("submit").disabled = true;
  let job;
  try {
    job = await (await api("/api/jobs", { method: "POST", body: form })).json();
  } catch (err) {
    $("submit").disabled = false;
    setState("error");
    return showError(err.message);
  }
  current = { id: job.id, events: null, timer: null };
  $("status-panel").hidden = false;
  render(job);
  loadRoll(job);
  follow(job.id);
}

function follow(id) {
  if (!window.EventSource) return poll(id);
  const events = new EventSource(`/api/jobs/${id}/events`);
  current.events = events;
  events.addEventListener("status", (e) => {
    const status = JSON.parse(e.data);
    render(status);
    if (TERMINAL.has(status.state)) events.close();
  });
  events.addEventListener("gone", () => {
    events.close();
    showError("The job is gone (deleted or expired).");
    finish();
  });
  events.addEventListener("shutdown", () => {  // the server is stopping: no more news will come
    events.close();
    showError("The server is shutting down; this job will not finish.");
    finish();
  });
  events.onerror = () => {  // the stream broke before the job ended: fall back to polling
    events.close();
    if (current && current.id === id && !TERMINAL.has(document.body.dataset.state)) poll(id);
  };
}

function poll(id) {
  const tick = async () => {
    if (!current || current.id !== id) return;
    try {
      const status = await (await api(`/api/jobs/${id}`)).json();
      render(status);
      if (!TERMINAL.has(status.state)) current.timer = setTimeout(tick, 500);
    } catch (err) {
      showError(err.message);
      finish();
    }
  };
  tick();
}

function stopFollowing() {
  if (!current) return;
  if (current.events) current.events.close();
  if (current.timer) clearTimeout(current.timer);
  current = null;
}

function render(status) {
  if (!current || status.id !== current.id) return;
  setState(status.state);
  const p = status.progress;
  $("progress").value = status.state === "done" ? 1 : p.fraction;
  $("cancel").disabled = TERMINAL.has(status.state) || status.cancel_requested;
  let text;
  switch (status.state) {
    case "queued":
      text = status.queue_position === 0 ? "Waiting for the model (next in line)…"
        : `Waiting in the queue: ${status.queue_position} job(s) ahead…`;
      break;
    case "running":
      text = `Denoising: step ${p.step} of ${p.total_steps} ` +
        `(segment ${Math.min(p.segments_done + 1, p.total_segments)} of ${p.total_segments}), ` +
        `${formatSeconds(status.elapsed_s)}` + (status.cancel_requested ? " — cancelling…" : "");
      break;
    case "done":
      text = `Done: ${formatSeconds(status.audio_seconds)} of audio in ${formatSeconds(status.elapsed_s)} ` +
        `(seed ${status.settings.seed}).`;
      break;
    case "failed":
      text = `Failed: ${status.error}`;
      break;
    case "cancelled":
      text = `Cancelled: ${status.error}`;
      break;
  }
  $("state").textContent = text;
  if (status.state === "done") showResult(status);
  if (TERMINAL.has(status.state)) finish();
}

function finish() {
  $("submit").disabled = false;
  $("cancel").disabled = true;
}

function showResult(status) {
  const stem = status.midi.name.replace(/\.[^.]*$/, "") || "specdiff";
  $("player").src = status.links.audio;
  $("download").href = status.links.audio;
  $("download").download = `${stem}.wav`;
  $("spectrogram").src = status.links.spectrogram;
  const s = status.settings;
  $("result-info").textContent = `${status.midi.name}: ${s.steps} steps, guidance ${s.guidance}, ` +
    `${s.scheduler}, seed ${s.seed}`;
  $("result").hidden = false;
  if (roll && status.audio_seconds) {  // share the audio's time axis (it runs past the last note)
    roll.duration = Math.max(roll.duration, status.audio_seconds);
    roll.image = null;
    drawRoll(0);
  }
}

async function cancel() {
  if (!current) return;
  $("cancel").disabled = true;
  try {
    render(await (await api(`/api/jobs/${current.id}/cancel`, { method: "POST" })).json());
  } catch (err) {
    showError(err.message);
  }
}

// ---- piano roll --------------------------------------------------------------------------------

function colorOf(note) {
  if (note.is_drum) return "hsl(0, 0%, 72%)";
  return `hsl(${(Math.floor(note.program / 8) * 67) % 360}, 75%, 62%)`;
}

async function loadRoll(job) {
  try {
    const data = await (await api(job.links.notes)).json();
    roll = { notes: data.notes, duration: Math.max(data.duration_s, 1e-3), image: null };
  } catch (err) {
    return showError(`piano roll: ${err.message}`);
  }
  $("roll-panel").hidden = false;
  const families = new Map();
  for (const n of roll.notes) {
    const name = n.is_drum ? "Drums" : FAMILIES[Math.floor(n.program / 8)];
    if (!families.has(name)) families.set(name, colorOf(n));
  }
  $("roll-legend").innerHTML = "";
  for (const [name, color] of families) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, name);
    $("roll-legend").append(item);
  }
  drawRoll(0);
}

function renderRollImage(width, height) {
  const image = document.createElement("canvas");
  image.width = width;
  image.height = height;
  const ctx = image.getContext("2d");
  const pitches = roll.notes.map((n) => n.pitch);
  const low = Math.max(0, Math.min(...pitches) - 2);
  const high = Math.min(127, Math.max(...pitches) + 2);
  const rowHeight = height / (high - low + 1);
  const x = (t) => (t / roll.duration) * width;
  ctx.fillStyle = "#15151a";
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = "rgba(255,255,255,0.07)";  // a line at every C
  for (let p = low; p <= high; p++) {
    if (p % 12 !== 0) continue;
    const y = height - (p - low + 1) * rowHeight;
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(width, y); ctx.stroke();
  }
  for (const n of roll.notes) {
    ctx.fillStyle = colorOf(n);
    const y = height - (n.pitch - low + 1) * rowHeight;
    const w = n.is_drum ? Math.max(2, rowHeight) : Math.max(1.5, x(n.end) - x(n.start));
    ctx.fillRect(x(n.start), y, w, Math.max(1, rowHeight - 0.5));
  }
  return image;
}

function drawRoll(seconds) {
  if (!roll) return;
  const canvas = $("piano-roll");
  const width = Math.max(300, Math.round(canvas.clientWidth * (window.devicePixelRatio || 1)));
  if (canvas.width !== width) canvas.width = width;
  if (!roll.image || roll.image.width !== canvas.width || roll.image.height !== canvas.height) {
    roll.image = renderRollImage(canvas.width, canvas.height);
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(roll.image, 0, 0);
  if (seconds > 0) {
    const x = Math.min(1, seconds / roll.duration) * canvas.width;
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.fillRect(x - 1, 0, 2, canvas.height);
  }
}

function animatePlayhead() {
  const player = $("player");
  const frame = () => {
    drawRoll(player.currentTime);
    if (!player.paused && !player.ended) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

init();
