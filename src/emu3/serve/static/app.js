// Behaviour of the emu3 page: tabs, image generation over the streamed /v1/images/generations API
// (progress bar, row-by-row preview, gallery) and multi-turn chat over streamed
// /v1/chat/completions with image upload. No framework and no build step; state lives in this file.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("emu3-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("emu3-api-key", keyInput.value));

// ---- tabs ---------------------------------------------------------------------------------------

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
  });
}

// ---- talking to the API -------------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h.Authorization = `Bearer ${keyInput.value}`;
  return h;
}

// POST a JSON body; a non-2xx answer becomes an Error carrying the server's message.
async function post(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not our JSON error */ }
    const retry = response.headers.get("Retry-After");
    throw new Error(retry ? `${message} (retry in ${retry} s)` : message);
  }
  return response;
}

// Read a text/event-stream body, calling onEvent(name, data) per event ("message" when unnamed).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// ---- image generation ---------------------------------------------------------------------------

const cfg = $("cfg");
cfg.addEventListener("input", () => { $("cfg-value").textContent = Number(cfg.value).toFixed(1); });
const counters = { progress: 0, previews: 0 };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function canvases(n, ratio) {
  const stage = $("stage");
  stage.replaceChildren();
  stage.hidden = false;
  const [w, h] = ratio.split(":").map(Number);
  const boxes = [];
  for (let i = 0; i < n; i++) {
    const box = document.createElement("div");
    box.className = "canvas";
    box.style.aspectRatio = `${w} / ${h}`;
    const img = document.createElement("img");
    img.alt = `image ${i + 1} in progress`;
    img.hidden = true;
    box.append(img);
    stage.append(box);
    boxes.push(img);
  }
  return boxes;
}

function addToGallery(b64, prompt, seed, size) {
  const src = `data:image/png;base64,${b64}`;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = prompt;
  const caption = document.createElement("figcaption");
  const link = document.createElement("a");
  link.href = src;
  link.download = `emu3-${seed}.png`;
  link.textContent = "download";
  caption.append(`${prompt} · seed ${seed} · ${size} · `, link);
  figure.append(img, caption);
  $("gallery").prepend(figure);
  $("gallery-empty").hidden = true;
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) { setStatus("Write a prompt first.", true); return; }
  const ratio = $("ratio").value;
  const n = Number($("count").value);
  const body = { prompt, ratio, cfg: Number(cfg.value), n, stream: true };
  if ($("seed").value !== "") body.seed = Number($("seed").value);

  const button = $("generate");
  const bar = $("progress");
  button.disabled = true;
  document.body.dataset.state = "running";
  bar.hidden = false;
  bar.value = 0;
  const previews = canvases(n, ratio);
  setStatus("Sending...");
  let finished = 0;
  try {
    const response = await post("/v1/images/generations", body);
    await readEvents(response, (name, data) => {
      const e = JSON.parse(data);
      if (name === "image_generation.queued") {
        setStatus(e.position > 0 ? `Queued: ${e.position} ahead.` : "Starting...");
      } else if (name === "image_generation.progress") {
        counters.progress += 1;
        bar.value = e.fraction;
        setStatus(`Generating: step ${e.done} of ${e.total} (${Math.round(e.fraction * 100)}%)`);
      } else if (name === "image_generation.partial_image") {
        counters.previews += 1;
        const img = previews[e.image_index];
        img.src = `data:image/png;base64,${e.b64_json}`;
        img.hidden = false;
      } else if (name === "image_generation.completed") {
        finished += 1;
        const img = previews[e.image_index];
        img.src = `data:image/png;base64,${e.b64_json}`;
        img.hidden = false;
        addToGallery(e.b64_json, e.revised_prompt, e.seed, e.size);
      } else if (name === "error") {
        throw new Error(e.error.message);
      }
      document.body.dataset.progressEvents = counters.progress;
      document.body.dataset.previews = counters.previews;
    });
    if (finished !== n) throw new Error("the stream ended before the images arrived");
    bar.value = 1;
    setStatus(`Done: ${n} image${n > 1 ? "s" : ""}.`);
    document.body.dataset.state = "done";
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
    document.body.dataset.state = "error";
  } finally {
    button.disabled = false;
  }
});

// ---- chat ---------------------------------------------------------------------------------------

let history = [];      // OpenAI-style messages of the conversation so far
let attached = [];     // data URIs of images waiting to be sent
let replying = null;   // the AbortController of the reply being streamed, if any

function bubble(role, text, images = []) {
  const div = document.createElement("div");
  div.className = `bubble ${role}`;
  for (const src of images) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = "attached image";
    div.append(img, document.createElement("br"));
  }
  const span = document.createElement("span");
  span.textContent = text;
  div.append(span);
  $("chat-log").append(div);
  div.scrollIntoView({ block: "end" });
  return span;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

$("chat-images").addEventListener("change", async (event) => {
  for (const file of event.target.files) attached.push(await readAsDataURL(file));
  event.target.value = "";
  $("attachments").replaceChildren(...attached.map((src) => {
    const img = document.createElement("img");
    img.src = src;
    img.alt = "image to send";
    return img;
  }));
});

$("chat-reset").addEventListener("click", () => {
  if (replying) replying.abort();  // a reply still streaming belongs to the old conversation
  history = [];
  attached = [];
  $("chat-log").replaceChildren();
  $("attachments").replaceChildren();
});

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("chat-text").value.trim();
  if (!text && !attached.length) return;
  const content = [{ type: "text", text }, ...attached.map((url) => ({ type: "image_url", image_url: { url } }))];
  const message = { role: "user", content };
  bubble("user", text, attached);
  $("chat-text").value = "";
  attached = [];
  $("attachments").replaceChildren();
  const send = $("chat-send");
  send.disabled = true;
  const answer = bubble("assistant", "");
  let reply = "";
  const controller = new AbortController();
  replying = controller;
  try {
    const response = await post("/v1/chat/completions", {
      messages: [...history, message], stream: true, max_tokens: Number($("max-tokens").value) || 256,
    }, controller.signal);
    await readEvents(response, (_, data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (delta) { reply += delta; answer.textContent = reply; }
    });
    if (!controller.signal.aborted) history.push(message, { role: "assistant", content: reply });
  } catch (err) {
    if (controller.signal.aborted) return;  // New chat: the turn is dropped with its bubbles
    answer.parentElement.classList.add("error");
    answer.textContent = `Error: ${err.message}`;
  } finally {
    if (replying === controller) replying = null;
    send.disabled = false;
  }
});

// ---- the model's name, from the API --------------------------------------------------------------

// The Images menu offers no more than one request may ask for (`--max-batch-images` may cap it below 4).
fetch("/health", { headers: headers() })
  .then((r) => (r.ok ? r.json() : null))
  .then((health) => {
    if (!health) return;
    for (const option of [...$("count").options]) if (Number(option.value) > health.max_images) option.remove();
  })
  .catch(() => {});

fetch("/v1/models", { headers: headers() })
  .then((r) => (r.ok ? r.json() : null))
  .then((list) => { if (list) $("model-name").textContent = `Model: ${list.data[0].id}`; })
  .catch(() => {});
