// hin serve's page: send a picture to POST /v1/captions, show the captions, and draw the
// attention maps the answer carries beside the picture (the picture itself keeps its
// colours), in the colormap `hin explain` uses. Everything is local: no CDN, no fonts.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, answer: null, word: null, colours: [[0, 0, 0], [255, 255, 255]] };
const MAX_SIDE = 480;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function describeTraining(training) {
  const parts = [`trained on ${training.dataset || "an unrecorded data set"}`];
  if (training.images !== null) parts.push(`${training.images} images`);
  parts.push(`${training.vocabulary_size} words`);
  const extractors = Object.entries(training.extractors)
    .map(([kind, e]) => `${kind} ${e.extractor || "unknown"}`).join(", ");
  parts.push(`features: ${extractors}`);
  if (training.validation_cider_d !== null) {
    parts.push(`validation CIDEr-D ${training.validation_cider_d.toFixed(1)}`);
  }
  return "What it knows: " + parts.join("; ") + ". It describes pictures only in the terms of " +
    "that world" + (training.familiarity_check ? " and says so when a picture looks unlike it." : ".");
}

async function loadInfo() {
  const info = await (await fetch("/v1/info")).json();
  const model = info.model;
  $("model").textContent = `${model.checkpoint} (sha256 ${model.sha256.slice(0, 12)}…), ` +
    `${model.layers} layers, d_model ${model.d_model}`;
  $("knows").textContent = describeTraining(model.training);
  state.colours = info.map_colormap.stops;
  $("beam").max = info.max_beam_size;
  $("beam").value = info.decoding.beam_size;
  $("count").value = Math.min(3, info.decoding.beam_size);
  if (!info.can_caption) {
    $("unavailable").hidden = false;
    $("unavailable").textContent = "This checkpoint cannot caption pictures here:\n" + info.unavailable;
    $("input").hidden = true;
    return;
  }
  if (info.demo_pictures.length) {
    $("demo-block").hidden = false;
    info.demo_pictures.forEach((name, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "demo";
      button.title = name;
      const thumb = document.createElement("img");
      thumb.src = `/v1/demo/${index}`;
      thumb.alt = name;
      button.appendChild(thumb);
      button.addEventListener("click", async () => {
        const blob = await (await fetch(thumb.src)).blob();
        caption(new File([blob], name, { type: blob.type }));
      });
      $("demos").appendChild(button);
    });
  }
}

function caption(file) {
  state.file = file;
  send(file).catch((error) => setStatus(`the request failed: ${error}`, true));
}

async function send(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("beam_size", $("beam").value);
  form.append("num_captions", $("count").value);
  form.append("explain", $("explain").checked ? "true" : "false");
  form.append("sample", $("sample").checked ? "true" : "false");
  for (const input of document.querySelectorAll("[data-option]")) {
    if (input.value !== "") form.append(input.dataset.option, input.value);
  }
  setStatus(`captioning ${file.name || "the picture"}…`);
  const [image, response] = await Promise.all([
    loadImage(URL.createObjectURL(file)),
    fetch("/v1/captions", { method: "POST", body: form }),
  ]);
  const answer = await response.json();
  if (!response.ok) {
    setStatus(`refused (${response.status}): ${answer.detail}`, true);
    return;
  }
  state.image = image;
  state.answer = answer;
  state.word = null;
  setStatus("");
  showAnswer();
}

function loadImage(url) {
  // The browser shows the picture upright (EXIF orientation), as the server reads it.
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);   // the server says what is wrong with it
    image.src = url;
  });
}

function showAnswer() {
  const answer = state.answer;
  $("result").hidden = false;
  $("unfamiliar").hidden = !answer.unfamiliar;
  $("unfamiliar").textContent = answer.unfamiliar ? `Note: ${answer.unfamiliar}.` : "";
  $("captions").replaceChildren(...answer.captions.map((c) => {
    const item = document.createElement("li");
    item.className = "caption";
    item.textContent = c.caption;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `log-prob ${c.log_prob.toFixed(2)}`;
    item.appendChild(score);
    return item;
  }));
  const d = answer.decoding;
  const how = d.sample ? `sampled (temperature ${d.temperature}, top-k ${d.top_k}, top-p ` +
    `${d.top_p}, seed ${d.seed === null ? "none" : d.seed})` : `beam ${d.beam_size}` +
    (d.diversity_groups > 1 ? ` in ${d.diversity_groups} diverse groups` : "");
  $("settings").textContent = `${how}, ${d.num_captions} caption(s), max length ${d.max_len}, ` +
    `length penalty ${d.length_penalty}, precision ${d.precision}; picture ${answer.picture.width}x` +
    `${answer.picture.height} ${answer.picture.format}; model sha256 ${answer.model.sha256.slice(0, 12)}…`;
  const explanation = answer.explanation;
  $("map-controls").hidden = !explanation;
  $("words-block").hidden = !explanation;
  $("word-figure").hidden = true;
  if (explanation) {
    const layers = [["mean", "mean of layers"]];
    for (let l = 0; l < explanation.layers; l++) layers.push([String(l), `layer ${l + 1}`]);
    $("layer").replaceChildren(...layers.map(([value, text]) => new Option(text, value)));
    $("words").replaceChildren(...explanation.words.map((word, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "word";
      button.textContent = word;
      button.addEventListener("click", () => { state.word = index; drawWord(); });
      return button;
    }));
  }
  drawView();
}

// Per-layer values [L][N] -> the chosen layer's [N] (or their mean).
function pickLayer(perLayer) {
  const choice = $("layer").value;
  if (choice !== "mean") return perLayer[Number(choice)];
  return perLayer[0].map((_, i) => perLayer.reduce((sum, row) => sum + row[i], 0) / perLayer.length);
}

// A value in [0, 1] -> the shared colormap's colour (stops from /v1/info, linear between).
function colour(t, alpha = 1) {
  const stops = state.colours;
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
}

function pictureScale() {
  const image = state.image;
  const side = Math.max(image.width, image.height);
  return Math.min(1, MAX_SIDE / side) * (side < 200 ? 4 : 1);
}

function drawPicture(canvas, faded) {
  const image = state.image;
  const scale = pictureScale();
  canvas.width = Math.round(image.width * scale);
  canvas.height = Math.round(image.height * scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  if (faded) context.filter = "grayscale(1) opacity(0.35)";   // only to find one's way on the map
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  context.filter = "none";
  return context;
}

function drawColourBar() {
  const bar = $("colour-bar");
  const context = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    context.fillStyle = colour(x / (bar.width - 1));
    context.fillRect(x, 0, 1, bar.height);
  }
}

// The map on a faded grey copy of the picture; -> a note saying what is drawn.
function drawMap(canvas, kind, values) {
  const explanation = state.answer.explanation;
  const context = drawPicture(canvas, true);
  const scale = pictureScale();
  const top = Math.max(...values, 1e-12);
  if (kind === "grid") {
    if (!explanation.grid) return "grid map not drawn: " + explanation.missing.join("; ");
    const { rows, cols, box } = explanation.grid;
    const cellW = (box[2] - box[0]) / cols, cellH = (box[3] - box[1]) / rows;
    values.forEach((v, i) => {
      const r = Math.floor(i / cols), c = i % cols;
      context.fillStyle = colour(v / top, 0.85);
      context.fillRect((box[0] + c * cellW) * scale, (box[1] + r * cellH) * scale,
                       cellW * scale + 0.5, cellH * scale + 0.5);
    });
    return `${rows}x${cols} grid; 0 to ${top.toFixed(3)} (brighter = more attention)`;
  }
  if (!explanation.regions) return "region map not drawn: " + explanation.missing.join("; ");
  const boxes = explanation.regions.boxes;
  const order = values.map((v, i) => i).sort((a, b) => values[a] - values[b]);
  for (const i of order) {
    const [x1, y1, x2, y2] = boxes[i].map((v) => v * scale);
    context.fillStyle = colour(values[i] / top, 0.6);
    context.fillRect(x1, y1, x2 - x1, y2 - y1);
    context.strokeStyle = colour(values[i] / top, 1);
    context.lineWidth = 2;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  return `${boxes.length} regions; 0 to ${top.toFixed(3)} (brighter = more attention)`;
}

function drawView() {
  const explanation = state.answer.explanation;
  const kind = $("map-kind").value;
  $("layer-label").hidden = kind === "none";
  if (!state.image) {
    $("map-figure").hidden = true;
    setStatus("the browser cannot show this picture");
    return;
  }
  drawPicture($("view"), false);
  const showMap = Boolean(explanation) && kind !== "none";
  $("map-figure").hidden = !showMap;
  if (showMap) {
    const values = pickLayer(kind === "grid" ? explanation.encoder_grid : explanation.encoder_region);
    drawColourBar();
    $("map-note").textContent = drawMap($("map"), kind, values);
  }
  if (state.word !== null) drawWord();
}

function drawWord() {
  const explanation = state.answer.explanation;
  const w = state.word;
  const kind = $("map-kind").value === "regions" ? "regions" : "grid";
  const perLayer = (kind === "grid" ? explanation.decoder_grid : explanation.decoder_region)
    .map((layer) => layer[w]);
  const canvas = document.createElement("canvas");
  const note = drawMap(canvas, kind, pickLayer(perLayer));
  const gate = pickLayer(explanation.decoder_gate.map((layer) => [layer[w]]))[0];
  document.querySelectorAll(".word").forEach((b, i) => b.classList.toggle("chosen", i === w));
  $("word-map").src = canvas.toDataURL("image/png");
  $("word-caption").textContent = `"${explanation.words[w]}": decoder ${kind} attention ` +
    `(${$("layer").selectedOptions[0].text}), fusion gate ${gate.toFixed(2)}. ${note}`;
  $("word-figure").hidden = false;
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files[0]) caption($("file").files[0]); });
  drop.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target === drop) {
      event.preventDefault();
      $("file").click();
    }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) caption(event.dataTransfer.files[0]);
  });
  // New settings re-caption the picture on show.
  for (const input of [$("beam"), $("count"), $("explain"), $("sample"),
                       ...document.querySelectorAll("[data-option]")]) {
    input.addEventListener("change", () => { if (state.file) caption(state.file); });
  }
  $("map-kind").addEventListener("change", () => state.answer && drawView());
  $("layer").addEventListener("change", () => state.answer && drawView());
  loadInfo().catch((error) => setStatus(`could not reach the server: ${error}`, true));
}

setUp();
