// hin serve's page: a picture (chosen, dropped anywhere, pasted or one of the examples) goes
// to POST v1/captions with the options; the answer's captions are shown with the picture and
// the attention maps it carries, drawn in the colormap `hin explain` uses. Only the newest
// request may show its answer: a newer picture or Cancel aborts the one in flight, and an
// answer that still arrives late is dropped. Every URL is relative, so the page works behind
// a path prefix; no inline script or style, so a strict Content-Security-Policy holds.
import { drawMap, drawPicture, drawScale, fit, pickLayer } from "./view.js";

const $ = (id) => document.getElementById(id);
const PAGE_CAPTIONS = 3;      // captions asked for by default, unless the server's default is more
const state = {
  info: null,
  defaults: {},               // input id -> its default value (text)
  latest: null,               // the newest request: {controller, file, name}; older ones are dropped
  file: null, name: "",       // the picture in the drop zone
  chosenUrl: null,
  shown: null,                // {answer, image, file, name}: what the result shows
  word: null,                 // the chosen word's index, or null: the encoder's map
  defaultMode: "search",
};
const canCaption = () => Boolean(state.info && state.info.can_caption);

// ---- what the model knows -------------------------------------------------------------

function fact(value, label) {
  const item = document.createElement("li");
  const strong = document.createElement("strong");
  strong.textContent = value;
  const span = document.createElement("span");
  span.textContent = label;
  item.append(strong, span);
  return item;
}

function describe(model) {
  const training = model.training;
  const number = (n) => n.toLocaleString("en");
  const facts = [fact(training.dataset || "not recorded", "data set"),
                 fact(training.images === null ? "not recorded" : number(training.images), "pictures"),
                 fact(`${number(training.vocabulary_size)} words`, "vocabulary")];
  if (training.validation_cider_d !== null) {
    facts.push(fact(training.validation_cider_d.toFixed(1), "validation CIDEr-D"));
  }
  $("facts").replaceChildren(...facts);
  $("facts").hidden = false;
  $("knows-text").textContent = "It describes any picture only in the words it learned from its " +
    "training pictures" + (training.familiarity_check ? ", and notes when a picture looks unlike them." : ".");
  const details = [["checkpoint", model.checkpoint], ["sha256", model.sha256],
                   ["size", `${model.layers} layers, d_model ${model.d_model}`],
                   ...Object.entries(model.features).map(([kind, source]) => [
                     `${kind} features`, [source.extractor, source.model].filter(Boolean).join(", ") || "not recorded"])];
  $("model-facts").replaceChildren(...details.flatMap(([term, text]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text;
    if (term === "sha256") dd.className = "hash";
    return [dt, dd];
  }));
  $("model-details").hidden = false;
}

async function loadInfo() {
  const response = await fetch("v1/info");
  if (!response.ok) throw new Error(`v1/info answered ${response.status}`);
  const info = await response.json();
  state.info = info;
  describe(info.model);
  setDefaults(info);
  if (!info.can_caption) {
    $("unavailable").hidden = false;
    $("unavailable").textContent = "This checkpoint cannot caption pictures here: " + info.unavailable;
    $("layout").hidden = true;
    return;
  }
  $("run").disabled = false;
  $("option-fields").disabled = false;
  showDemos(info.demo_pictures);
}

function showDemos(names) {
  $("demo-block").hidden = names.length === 0;
  $("demos").replaceChildren(...names.map((name, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "demo";
    button.title = name;
    button.setAttribute("aria-label", `caption the example ${name}`);
    const thumb = document.createElement("img");
    thumb.src = `v1/demo/${index}`;
    thumb.alt = "";
    button.appendChild(thumb);
    button.addEventListener("click", () => caption(demoFile(thumb.src, name), name));
    return button;
  }));
}

async function demoFile(url, name) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`the example answered ${response.status}`);
  const blob = await response.blob();
  return new File([blob], name, { type: blob.type });
}

// ---- options ----------------------------------------------------------------------------

function setDefaults(info) {
  const d = info.decoding;
  $("beam").max = info.max_beam_size;
  const values = {
    beam: d.beam_size, groups: d.diversity_groups, diversity: d.diversity_strength,
    temperature: d.temperature, "top-k": d.top_k, "top-p": d.top_p, seed: d.seed === null ? "" : d.seed,
    "length-penalty": d.length_penalty, "min-len": d.min_len, "no-repeat": d.no_repeat_ngram,
  };
  values.count = Math.max(d.num_captions, Math.min(PAGE_CAPTIONS, d.beam_size));
  $("min-len").max = d.max_len - 1;
  $("no-repeat").max = d.max_len;
  state.defaults = Object.fromEntries(Object.entries(values).map(([id, v]) => [id, String(v)]));
  state.defaultMode = d.sample ? "sampling" : "search";
  for (const label of document.querySelectorAll("[data-default-of]")) {
    const value = state.defaults[label.dataset.defaultOf];
    label.textContent = `default ${value === "" ? "random" : value}`;
  }
  restoreDefaults();
}

function restoreDefaults() {
  for (const [id, value] of Object.entries(state.defaults)) {
    if (id !== "groups") $(id).value = value;
  }
  setGroupChoices();
  $("groups").value = state.defaults.groups;
  document.querySelector(`input[name=mode][value=${state.defaultMode}]`).checked = true;
  $("explain").checked = true;
  applyMode();
  limitCount();
  note("");
}

const sampling = () => document.querySelector("input[name=mode]:checked").value === "sampling";

function note(text) {
  $("option-note").textContent = text;
}

// The diverse groups must divide the beam size: the menu offers only those.
function setGroupChoices() {
  const beam = Number($("beam").value);
  const chosen = $("groups").value || state.defaults.groups;
  const divisors = Array.from({ length: beam }, (_, i) => i + 1).filter((g) => beam % g === 0);
  $("groups").replaceChildren(...divisors.map((g) => new Option(g === 1 ? "1 (off)" : String(g), String(g))));
  $("groups").value = divisors.includes(Number(chosen)) ? chosen : "1";
}

function applyMode() {
  $("search-group").disabled = sampling();
  $("sampling-group").disabled = !sampling();
}

// Beam search keeps beam-size hypotheses (one per diverse group): ask for no more captions.
function limitCount() {
  const groups = Number($("groups").value);
  const [most, why] = sampling() ? [state.info.max_beam_size, "this server's limit"] :
    groups > 1 ? [groups, "one per diverse group"] : [Number($("beam").value), "the beam size"];
  $("count").max = most;
  if (Number($("count").value) > most) {
    $("count").value = most;
    return `Captions limited to ${most}: ${why}.`;
  }
  return "";
}

// A number typed out of its input's range is brought back to it (empty: the default), saying so.
function clampNumber(input) {
  const label = document.querySelector(`label[for="${input.id}"]`).textContent;
  if (input.value.trim() === "" || !Number.isFinite(Number(input.value))) {
    if (input.id === "seed") return "";
    input.value = state.defaults[input.id];
    return `${label}: back to its default ${input.value}.`;
  }
  let value = Number(input.value);
  if (input.step === "1") value = Math.round(value);
  const low = input.min === "" ? -Infinity : Number(input.min);
  // The number of captions is limited by limitCount, which says why.
  const high = input.max === "" || input.id === "count" ? Infinity : Number(input.max);
  const kept = Math.min(Math.max(value, low), high);
  input.value = String(kept);
  return kept === value ? "" : `${label}: limited to ${kept}.`;
}

function optionsChanged(event) {
  const input = event.target;
  let said = input.type === "number" ? clampNumber(input) : "";
  if (input.id === "temperature" && Number(input.value) <= 0) {
    input.value = state.defaults.temperature;
    said = "Temperature must be above 0: back to its default.";
  }
  if (input.id === "top-p" && Number(input.value) <= 0) {
    input.value = state.defaults["top-p"];
    said = "Top-p must be above 0: back to its default.";
  }
  if (input.id === "beam") setGroupChoices();
  if (input.name === "mode") applyMode();
  note([said, limitCount()].filter(Boolean).join(" "));
  if (state.file) caption(state.file, state.name);
}

// The form: num_captions, explain and the beam size (searching) always, `sample` where it
// differs from the server's default; the chosen way's other options and the shared ones only
// where they differ from the server's defaults (sampling options never go with search).
function requestForm(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("num_captions", $("count").value);
  form.append("explain", $("explain").checked ? "true" : "false");
  const groups = [$("either-group")];
  if (sampling()) {
    form.append("sample", "true");
    groups.push($("sampling-group"));
  } else {
    if (state.defaultMode === "sampling") form.append("sample", "false");
    form.append("beam_size", $("beam").value);
    groups.push($("search-group"));
  }
  for (const group of groups) {
    for (const input of group.querySelectorAll("[data-option]")) {
      if (input.id !== "beam" && input.value !== "" && input.value !== state.defaults[input.id]) {
        form.append(input.dataset.option, input.value);
      }
    }
  }
  return form;
}

// ---- requests and the page's states -------------------------------------------------------

function showChosen(file, name) {
  if (state.chosenUrl) URL.revokeObjectURL(state.chosenUrl);
  state.chosenUrl = URL.createObjectURL(file);
  const chosen = $("chosen");
  chosen.alt = `the chosen picture, ${name}`;
  chosen.onerror = () => {
    chosen.hidden = true;
    $("chosen-name").textContent = `${name}: this browser cannot show it; the server's copy ` +
      "comes with the captions.";
  };
  chosen.onload = () => { chosen.hidden = false; };
  chosen.src = state.chosenUrl;
  $("drop").classList.add("has-picture");
  $("chosen-name").hidden = false;
  $("chosen-name").textContent = name;
  $("drop-title").textContent = "Drop or paste another picture, or";
  $("file").value = "";
}

function setBusy(busy, text = "") {
  $("busy").hidden = !busy;
  $("busy-text").textContent = text;
  $("output").setAttribute("aria-busy", String(busy));
  $("option-fields").disabled = busy;
  for (const demo of document.querySelectorAll(".demo")) demo.disabled = busy;
  $("result").classList.toggle("stale", busy);
  if (busy) $("status").textContent = "";
}

function showError(text) {
  state.shown = null;
  $("result").hidden = true;
  $("empty").hidden = true;
  $("error").hidden = false;
  $("error").textContent = text;
  $("status").textContent = "";
}

// A picture (a File, or a promise of one: an example being fetched) -> its answer shown,
// unless a newer request or Cancel came first.
async function caption(source, name) {
  if (!canCaption()) return;
  if (state.latest) state.latest.controller.abort();
  const request = { controller: new AbortController(), name };
  state.latest = request;
  setBusy(true, `Captioning ${name}…`);
  try {
    request.file = await source;
    if (request !== state.latest) return;
    if (request.file !== state.file) {
      state.file = request.file;
      state.name = name;
      showChosen(request.file, name);
    }
    const [image, response] = await Promise.all([
      loadImage(state.chosenUrl),
      fetch("v1/captions", { method: "POST", body: requestForm(request.file),
                             signal: request.controller.signal }),
    ]);
    const answer = await readAnswer(response);
    if (request !== state.latest) return;        // superseded while the answer was read
    if (answer.failed) {
      if ($("chosen").hidden) $("chosen-name").textContent = `${name} (no preview)`;
      showError(`Could not caption ${name}: ${answer.failed}`);
    } else {
      // The browser cannot draw every picture the server reads (TIFF): then the server's preview.
      const drawn = image || (answer.preview ? await loadImage(answer.preview) : null);
      if (request !== state.latest) return;
      if (!image && drawn) {
        $("chosen").src = answer.preview;
        $("chosen-name").textContent = `${name}: the server's copy (this browser cannot show the file)`;
      }
      showAnswer({ answer, image: drawn, file: request.file, name });
    }
  } catch (error) {
    if (request !== state.latest) return;
    if (error.name === "AbortError") return;      // Cancel has said what happened
    showError(`Could not reach the server to caption ${name} (${error.message}).`);
  }
  state.latest = null;
  setBusy(false);
}

// A response -> its JSON answer, or {failed: what went wrong} for an error of any shape.
async function readAnswer(response) {
  const text = await response.text();
  let answer = null;
  try { answer = JSON.parse(text); } catch { answer = null; }
  if (response.ok && answer) return answer;
  const detail = answer && typeof answer.detail === "string" ? answer.detail : text.slice(0, 300);
  const wait = response.headers.get("Retry-After");
  return { failed: `${detail || response.statusText} (HTTP ${response.status}` +
                   (wait ? `; the server is busy, try again in ${wait} s)` : ")") };
}

function cancel() {
  const request = state.latest;
  if (!request) return;
  request.controller.abort();
  state.latest = null;
  setBusy(false);
  const same = state.shown && state.shown.file === request.file;
  $("result").hidden = !same;
  $("empty").hidden = same || !$("error").hidden;
  $("status").textContent = `Cancelled: ${request.name} was not captioned.`;
}

function loadImage(url) {
  // The browser shows the picture upright (EXIF orientation), as the server reads it.
  return new Promise((resolve) => {
    if (!url) { resolve(null); return; }
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = url;
  });
}

// ---- the result ---------------------------------------------------------------------------

function settingsText(answer) {
  const d = answer.decoding;
  const how = d.sample
    ? `sampled at temperature ${d.temperature}, top-k ${d.top_k}, top-p ${d.top_p}, seed ` +
      (d.seed === null ? "random" : d.seed)
    : `beam ${d.beam_size}` + (d.diversity_groups > 1 ? ` in ${d.diversity_groups} diverse groups` : "");
  const p = answer.picture;
  return `${how}; ${d.num_captions} caption${d.num_captions === 1 ? "" : "s"}, at most ` +
    `${d.max_len} words, length penalty ${d.length_penalty}, ${d.precision}. Picture ` +
    `${p.width}×${p.height} ${p.format}.`;
}

function showAnswer(shown) {
  const { answer } = shown;
  state.shown = shown;
  state.word = null;
  $("error").hidden = true;
  $("empty").hidden = true;
  $("status").textContent = "";
  $("result").hidden = false;
  $("unfamiliar").hidden = !answer.unfamiliar;
  const lead = document.createElement("strong");
  lead.textContent = "Unlike its training pictures: ";
  $("unfamiliar").replaceChildren(lead, answer.unfamiliar ? `${answer.unfamiliar}.` : "");
  $("captions").replaceChildren(...answer.captions.map((c, i) => {
    const item = document.createElement("li");
    item.className = i === 0 ? "caption best" : "caption";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = c.caption;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `log-prob ${c.log_prob.toFixed(2)}`;
    item.append(text, score);
    return item;
  }));
  $("settings").textContent = settingsText(answer);
  const explanation = answer.explanation;
  $("words-block").hidden = !explanation;
  $("map-controls").hidden = !explanation;
  if (explanation) {
    const layers = [["mean", "mean of layers"]];
    for (let l = 0; l < explanation.layers; l++) layers.push([String(l), `layer ${l + 1}`]);
    const layer = $("layer").value;
    $("layer").replaceChildren(...layers.map(([value, text]) => new Option(text, value)));
    if (layers.some(([value]) => value === layer)) $("layer").value = layer;
    const whole = wordButton("whole picture", null);
    whole.classList.add("whole");
    $("words").replaceChildren(whole, ...explanation.words.map((word, index) => wordButton(word, index)));
  }
  drawView();
  const best = answer.captions[0];
  $("announce").textContent = `${answer.captions.length} caption${answer.captions.length === 1 ? "" : "s"} ` +
    `for ${shown.name}. Best: ${best ? best.caption : "none"}.`;
  // Stacked (a phone): the result is below the options, so bring it into view.
  if ($("output").getBoundingClientRect().top > $("input").getBoundingClientRect().bottom - 1) {
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("output").scrollIntoView({ behavior: still ? "auto" : "smooth", block: "start" });
  }
}

function wordButton(text, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "word";
  button.textContent = text;
  button.setAttribute("aria-pressed", String(index === state.word));
  button.addEventListener("click", () => {
    state.word = index;
    for (const b of $("words").children) b.setAttribute("aria-pressed", String(b === button));
    drawView();
  });
  return button;
}

// The values of the map to draw: the encoder's, or the chosen word's decoder attention.
function mapValues(explanation, kind) {
  const layer = $("layer").value;
  if (state.word === null) {
    return pickLayer(kind === "grid" ? explanation.encoder_grid : explanation.encoder_region, layer);
  }
  const perLayer = kind === "grid" ? explanation.decoder_grid : explanation.decoder_region;
  return pickLayer(perLayer.map((rows) => rows[state.word]), layer);
}

function drawView() {
  const shown = state.shown;
  if (!shown) return;
  const { answer, image } = shown;
  const box = $("stage-block").clientWidth;
  const size = fit(answer.picture.width, answer.picture.height, box,
                   Math.max(240, Math.min(620, Math.round(window.innerHeight * 0.55))));
  $("stage").style.width = `${size.width}px`;
  $("stage").style.height = `${size.height}px`;
  $("scale").style.width = `${Math.min(box, Math.max(size.width, 260))}px`;
  drawPicture($("view"), image, size);
  $("view").setAttribute("aria-label", `the picture, ${answer.picture.width}×${answer.picture.height}`);
  const notes = [];
  if (!image) notes.push("This browser cannot draw this picture and the server sent no preview.");
  if (size.stretched) {
    notes.push(`Drawn stretched to stay visible: the picture is ${answer.picture.width}×` +
               `${answer.picture.height} pixels.`);
  }
  $("picture-note").textContent = notes.join(" ");
  const explanation = answer.explanation;
  const kind = $("map-kind").value;
  const showMap = Boolean(explanation) && kind !== "none";
  $("map").hidden = !showMap;
  $("scale").hidden = !showMap;
  $("layer-field").hidden = !showMap;
  $("opacity-field").hidden = !showMap;
  if (!showMap) return;
  $("map").style.opacity = $("opacity").value;
  const values = mapValues(explanation, kind);
  const drawn = drawMap($("map"), size, answer.picture, explanation, kind, values, state.info.map_colormap.stops);
  const { low, high } = drawScale($("colour-bar"), $("ticks"), state.info.map_colormap.stops, values);
  const whose = state.word === null ? "the encoder's attention over the picture"
    : `where the decoder looked for "${explanation.words[state.word]}", fusion gate ` +
      pickLayer(explanation.decoder_gate.map((rows) => [rows[state.word]]), $("layer").value)[0].toFixed(2);
  $("map-note").textContent = `${whose} (${$("layer").selectedOptions[0].text}): ${drawn}; ` +
    (high > low ? "colours span this map's own range, brighter is more." : "every part weighs the same.");
  $("map").setAttribute("aria-label", $("map-note").textContent);
  $("ticks").setAttribute("aria-label", `colour scale from ${$("ticks").firstChild.textContent} ` +
                          `to ${$("ticks").lastChild.textContent}`);
}

// ---- choosing pictures: the chooser, the drop zone, the whole page, the clipboard ----------

function pictureFrom(files) {
  return [...(files || [])].find((file) => file.type.startsWith("image/") || file.type === "") || null;
}

function listen() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) caption(file, file.name);
  });
  drop.addEventListener("click", (event) => {
    if (!event.target.closest("label, input")) $("file").click();   // the label opens it itself
  });
  // A picture dropped anywhere is captioned; the browser never opens a dropped file itself.
  let dragging = 0;
  window.addEventListener("dragenter", (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    dragging++;
    $("drag-veil").hidden = !canCaption();
  });
  window.addEventListener("dragleave", () => {
    dragging = Math.max(0, dragging - 1);
    if (!dragging) $("drag-veil").hidden = true;
  });
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = canCaption() ? "copy" : "none";
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragging = 0;
    $("drag-veil").hidden = true;
    const file = pictureFrom(event.dataTransfer.files);
    if (file && canCaption()) caption(file, file.name);
  });
  document.addEventListener("paste", (event) => {
    const file = pictureFrom(event.clipboardData && event.clipboardData.files);
    if (!file || !canCaption()) return;
    event.preventDefault();
    caption(file, file.name && file.name !== "image.png" ? file.name : "the pasted picture");
  });
  $("options").addEventListener("change", optionsChanged);
  $("options").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.file) caption(state.file, state.name);
    else $("file").click();
  });
  $("defaults").addEventListener("click", () => {
    restoreDefaults();
    if (state.file) caption(state.file, state.name);
  });
  $("cancel").addEventListener("click", cancel);
  $("map-kind").addEventListener("change", drawView);
  $("layer").addEventListener("change", drawView);
  $("opacity").addEventListener("input", () => { $("map").style.opacity = $("opacity").value; });
  let pending = false;
  window.addEventListener("resize", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawView(); });
  });
}

listen();
loadInfo().catch((error) => {
  $("knows-text").textContent = "";
  showError(`Could not reach the server (${error.message}). Is hin serve running?`);
  $("empty").hidden = true;
});
