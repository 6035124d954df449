// The page of `soundstorm serve`: reads what the model supports (GET v1/model), builds a request from the form,
// posts it (POST v1/generate) and shows the audio, its spectrogram and the server's notes. No build step, no
// dependencies; every URL is relative to the page, so a proxy may serve it under a sub-path.
"use strict";

const $ = (id) => document.getElementById(id);

let model = null;      // GET v1/model, once read
let prompt = null;     // the voice prompt: {base64} of an audio file the server reads, or null
let resultUrl = null;  // object URL of the shown result (revoked when the next one replaces it)
let recorder = null;   // the MediaRecorder while recording

// Files the server decodes itself (soundfile: WAV, FLAC, OGG, MP3) go as they are; anything else the browser can
// decode (a phone's .m4a, a recording's WebM) is converted to WAV here.
const SERVER_READS = /\.(wav|wave|flac|ogg|oga|mp3)$/i;

// Request fields without an input of their own, shown next to the input that sets them.
const FIELD_SLOTS = { frames: "seconds", prompt_audio: "prompt_audio_base64", prompt_codes: "prompt_audio_base64",
                      semantic: "text" };

// ---- errors -------------------------------------------------------------------------------------------------

function clearErrors() {
  for (const slot of document.querySelectorAll(".error")) slot.textContent = "";
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// The message next to the input of `field` (a request field, as the server names it); the form's own slot when
// the field has no visible input (or none is named).
function showError(field, message) {
  const slot = field ? $(`${FIELD_SLOTS[field] || field}-error`) : null;
  if (!slot || slot.closest("[hidden]")) {
    $("form-error").textContent = field ? `${field}: ${message}` : message;
    return;
  }
  // The server's message may repeat the field's name ("top_k: must lie in ..."); the slot already says which.
  slot.textContent = message.startsWith(`${field}: `) ? message.slice(field.length + 2) : message;
  const input = document.querySelector(`[aria-describedby~="${slot.id}"]`);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

// ---- the model ------------------------------------------------------------------------------------------------

async function loadModel() {
  try {
    const response = await fetch("v1/model");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    model = await response.json();
  } catch (e) {
    $("model-summary").textContent = `Cannot read the model's description (${e.message}); is the server running?`;
    return;
  }
  describeModel();
  if (!model.sample_rate) {
    // Without a codec there is no audio to play; request files (`soundstorm generate`) still return codes.
    $("model-summary").textContent += " This model has no codec, so this page cannot make audio with it.";
    return;
  }
  applyLimits();
  $("generate").disabled = false;
}

function describeModel() {
  const parts = [`${model.levels} levels of ${model.codebook_size} codes`];
  if (model.sample_rate) parts.push(`${model.sample_rate} Hz audio at ${model.frame_rate} frames/s`);
  parts.push(model.text ? "reads text" : "does not read text (give a length)");
  if (model.guidance) parts.push("supports guidance");
  const longest = model.max_seconds ? `${model.max_seconds.toFixed(2)} s (${model.max_frames} frames)`
                                    : `${model.max_frames} frames`;
  $("model-summary").textContent = `Model: ${parts.join(", ")}; at most ${longest} per request.`;
  // Everything /v1/model says, the server's limits included, for whoever wants the details.
  const list = $("model-fields");
  list.replaceChildren();
  for (const [key, value] of Object.entries(model)) addTerm(list, key, JSON.stringify(value));
  $("model-details").hidden = false;
}

// Show the inputs the model can use, and give them the model's limits.
function applyLimits() {
  $("text-section").hidden = !model.text;
  $("prompt-text-row").hidden = !model.text;
  $("guidance-row").hidden = !model.guidance;
  $("seconds").max = model.max_seconds;
  $("seconds").step = 1 / model.frame_rate;
  $("top_k").max = model.codebook_size;
  $("top_k").placeholder = `all ${model.codebook_size} codes`;
  if (!model.text) $("seconds-hint").textContent = "The output's length.";
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    // Browsers offer the microphone to secure pages only: https, or http on localhost.
    $("record").disabled = true;
    $("prompt-status").textContent = "Recording needs the page over https or on localhost; upload a file instead.";
  }
  followText();
}

// Text sets the length itself; the seconds field applies only without text.
function followText() {
  const hasText = model.text && $("text").value.trim() !== "";
  $("seconds").disabled = hasText;
  if (model.text) {
    $("seconds-hint").textContent = hasText ? "The text sets the length." : "Without text, the output's length.";
  }
}

// ---- the voice prompt ---------------------------------------------------------------------------------------

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));  // after "data:...;base64,"
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// Encoded audio (any format the browser decodes) -> a mono 16-bit WAV file at the codec's sample rate, so the
// server neither converts nor resamples it.
async function toWav(data) {
  let context;
  try {
    context = new OfflineAudioContext(1, 1, model.sample_rate);
  } catch {
    context = new OfflineAudioContext(1, 1, 48000);  // a rate Web Audio refuses; the server resamples (with a notice)
  }
  const buffer = await context.decodeAudioData(data);  // resampled to the context's rate
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return encodeWav(mono, buffer.sampleRate);
}

// Float samples in [-1, 1] -> a RIFF/WAVE file: one channel, 16-bit PCM, little-endian.
function encodeWav(samples, sampleRate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const ascii = (offset, text) => [...text].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);              // the fmt chunk's size
  view.setUint16(20, 1, true);               // PCM
  view.setUint16(22, 1, true);               // channels
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, 2 * sampleRate, true);  // bytes per second
  view.setUint16(32, 2, true);               // bytes per frame
  view.setUint16(34, 16, true);              // bits per sample
  ascii(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => {
    const s = Math.max(-1, Math.min(1, x));
    view.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  });
  return new Blob([view.buffer], { type: "audio/wav" });
}

async function setPrompt(blob, label) {
  prompt = { base64: await blobToBase64(blob) };
  const preview = $("prompt-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("clear-prompt").disabled = false;
  $("prompt-status").textContent = `Prompt: ${label} (${(blob.size / 1024).toFixed(1)} KiB).`;
}

function clearPrompt() {
  prompt = null;
  const preview = $("prompt-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
  $("prompt-file").value = "";
  $("clear-prompt").disabled = true;
  $("prompt-status").textContent = "";
}

async function usePromptFile() {
  const file = $("prompt-file").files[0];
  if (!file) return;
  clearErrors();
  try {
    if (SERVER_READS.test(file.name)) await setPrompt(file, file.name);
    else await setPrompt(await toWav(await file.arrayBuffer()), `${file.name}, converted to WAV`);
  } catch (e) {
    clearPrompt();
    showError("prompt_audio_base64", `The browser cannot read ${file.name} (${e.message || e}).`);
  }
}

async function toggleRecording() {
  if (recorder) {
    recorder.stop();  // onstop below turns the recording into the prompt
    return;
  }
  clearErrors();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    showError("prompt_audio_base64", `The microphone is unavailable (${e.message || e}).`);
    return;
  }
  const chunks = [];
  const started = performance.now();
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    $("record").textContent = "Record with the microphone";
    $("record").setAttribute("aria-pressed", "false");
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    try {
      // MediaRecorder makes WebM/Opus (Chromium) or Ogg (Firefox); WAV is what every server-side reader takes.
      await setPrompt(await toWav(await new Blob(chunks).arrayBuffer()), `a ${seconds} s recording`);
    } catch (e) {
      clearPrompt();
      showError("prompt_audio_base64", `Cannot decode the recording (${e.message || e}).`);
    }
  };
  recorder.start();
  $("record").textContent = "Stop recording";
  $("record").setAttribute("aria-pressed", "true");
  $("prompt-status").textContent = "Recording…";
}

// ---- the request ------------------------------------------------------------------------------------------------

// A number input's value: undefined when empty; null (after showing an error) when the browser cannot parse it.
function numberField(id) {
  const input = $(id);
  if (input.validity.badInput) {
    showError(id, "must be a number");
    return null;
  }
  return input.value.trim() === "" ? undefined : Number(input.value);
}

// "8" -> 8, "8, 4, 2" -> [8, 4, 2]; anything else goes as typed and the server says what is wrong with it.
function stepsField() {
  const value = $("steps").value.trim();
  if (value === "") return undefined;
  const numbers = value.split(/[\s,]+/).map(Number);
  if (numbers.some(Number.isNaN)) return value;
  return numbers.length === 1 ? numbers[0] : numbers;
}

// The form -> a request object (fields as in soundstorm_jax/serving/requests.py); null when a field is unreadable.
function buildRequest() {
  const request = {};
  const text = $("text").value.trim();
  if (model.text && text) {
    request.text = text;
    request.voice = $("voice").value.trim() || undefined;
  }
  if (prompt) {
    request.prompt_audio_base64 = prompt.base64;
    if (request.text) request.prompt_text = $("prompt_text").value.trim() || undefined;
  }
  const ids = ["seed", "temperature", "top_k", "top_p"];
  if (!request.text) ids.unshift("seconds");
  if (model.guidance) ids.push("guidance_scale");
  for (const id of ids) {
    const value = numberField(id);
    if (value === null) return null;
    request[id] = value;
  }
  request.steps = stepsField();
  return request;  // undefined values vanish in JSON.stringify: the server's defaults apply
}

async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { error: text || `HTTP ${response.status} ${response.statusText}` };
  }
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  const request = buildRequest();
  if (!request) return;
  const button = $("generate");
  button.disabled = true;
  $("generate-form").setAttribute("aria-busy", "true");
  $("progress").textContent = "Generating…";
  const started = performance.now();
  try {
    const response = await fetch("v1/generate?format=json&spectrogram=1", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const body = await readBody(response);
    if (response.status === 503) {
      const wait = response.headers.get("Retry-After");
      showError(null, `The server is busy${wait ? `; try again in ${wait} s` : ""}. ${body.error || ""}`.trim());
    } else if (!response.ok) {
      showError(body.field, body.error || `HTTP ${response.status}`);
    } else {
      showResult(body, request, (performance.now() - started) / 1000);
    }
  } catch (e) {
    showError(null, `The request did not reach the server (${e.message || e}).`);
  } finally {
    button.disabled = false;
    $("generate-form").removeAttribute("aria-busy");
    $("progress").textContent = "";
  }
}

// ---- the result -----------------------------------------------------------------------------------------------

function addTerm(list, term, description) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = description;
  list.append(dt, dd);
}

function showResult(body, request, roundTrip) {
  const bytes = Uint8Array.from(atob(body.audio_base64), (ch) => ch.charCodeAt(0));
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
  $("result-audio").src = resultUrl;
  const download = $("download");
  download.href = resultUrl;
  // A name that says what it is ("soundstorm-hello-there-seed7.wav"); the server's id (a random hex string
  // unless the request gives one) is listed below.
  const words = (request.text || "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  const stem = ["soundstorm", words, `seed${request.seed ?? 0}`].filter(Boolean).join("-");
  download.download = `${stem}.wav`;
  download.textContent = `Download ${stem}.wav`;

  const image = $("spectrogram");
  image.hidden = !body.spectrogram_png_base64;
  if (body.spectrogram_png_base64) image.src = `data:image/png;base64,${body.spectrogram_png_base64}`;

  const list = $("metadata");
  const seconds = (x, digits = 2) => (typeof x === "number" ? `${x.toFixed(digits)} s` : "not reported");
  list.replaceChildren();
  addTerm(list, "Length", `${seconds(body.seconds, 3)} (${body.frames} frames at ${body.sample_rate} Hz)`);
  addTerm(list, "Batch size", `${body.batch_size ?? "not reported"}`);
  addTerm(list, "Queued", seconds(body.queue_seconds));
  addTerm(list, "Decoded in", seconds(body.decode_seconds));
  addTerm(list, "Round trip", seconds(roundTrip));
  addTerm(list, "Request id", String(body.id));
  const notices = $("notices");
  notices.replaceChildren(...(body.notices || []).map((notice) => {
    const item = document.createElement("li");
    item.textContent = notice;
    return item;
  }));
  notices.hidden = notices.children.length === 0;
  $("result").hidden = false;
}

// ---- wiring -----------------------------------------------------------------------------------------------------

$("generate-form").addEventListener("submit", generate);
$("text").addEventListener("input", followText);
$("prompt-file").addEventListener("change", usePromptFile);
$("record").addEventListener("click", toggleRecording);
$("clear-prompt").addEventListener("click", clearPrompt);
loadModel();
