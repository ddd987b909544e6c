// Drawing for hin serve's page: the picture fitted to the space the page has, the attention
// map on a canvas laid over it (its opacity is the page's slider), and the colour scale over
// the map's own range. Boxes arrive in upright picture pixels (the answer's `picture` size),
// so whatever image is drawn (the upload or the server's preview) is stretched over that size.

export const MIN_SIDE = 64;         // a 10000x10 picture is still drawn 64 px high

// (width, height) of a picture -> its size on the page: as large as fits the box (small
// pictures are enlarged), neither side under MIN_SIDE; `stretched` when that changed its shape.
export function fit(width, height, boxWidth, boxHeight) {
  const scale = Math.min(boxWidth / width, boxHeight / height);
  const shown = {
    width: Math.max(Math.min(MIN_SIDE, boxWidth), Math.round(width * scale)),
    height: Math.max(Math.min(MIN_SIDE, boxHeight), Math.round(height * scale)),
  };
  const aspect = width / height;
  shown.stretched = Math.abs(shown.width / shown.height - aspect) / aspect > 0.02;
  return shown;
}

// Per-layer values [L][N] -> the chosen layer's [N], or their mean ("mean").
export function pickLayer(perLayer, choice) {
  if (choice !== "mean") return perLayer[Number(choice)];
  return perLayer[0].map((_, i) => perLayer.reduce((sum, row) => sum + row[i], 0) / perLayer.length);
}

// A value in [0, 1] -> the colormap's colour (evenly spaced RGB stops, linear between).
export function colour(stops, t, alpha = 1) {
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
}

// Sizes a canvas to `shown` CSS pixels at the screen's density -> its 2D context.
function sized(canvas, shown) {
  const density = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(shown.width * density));
  canvas.height = Math.max(1, Math.round(shown.height * density));
  canvas.style.width = `${shown.width}px`;
  canvas.style.height = `${shown.height}px`;
  return canvas.getContext("2d");
}

// The picture (an Image, or null when neither the browser nor the server could give one).
export function drawPicture(canvas, image, shown) {
  const context = sized(canvas, shown);
  if (!image) {
    context.fillStyle = "#8a8f98";
    context.fillRect(0, 0, canvas.width, canvas.height);
    return;
  }
  // Enlarged a lot (a small picture): keep its pixels sharp rather than blurred.
  context.imageSmoothingEnabled = canvas.width < 3 * image.naturalWidth;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
}

// The smallest and largest value of a map: its colours and the scale span this range.
export function range(values) {
  return { low: Math.min(...values), high: Math.max(...values) };
}

// One map over the picture; `picture` is the answer's {width, height}. -> what was drawn,
// in words, or why nothing was.
export function drawMap(canvas, shown, picture, explanation, kind, values, stops) {
  const context = sized(canvas, shown);
  const sx = canvas.width / picture.width, sy = canvas.height / picture.height;
  const { low, high } = range(values);
  const place = (v) => (high > low ? (v - low) / (high - low) : 0.5);
  const line = Math.max(1, Math.round(canvas.width / 300));
  if (kind === "grid") {
    if (!explanation.grid) return "no grid map: " + explanation.missing.join("; ");
    const { rows, cols, box } = explanation.grid;
    const cellW = (box[2] - box[0]) / cols, cellH = (box[3] - box[1]) / rows;
    values.forEach((v, i) => {
      const r = Math.floor(i / cols), c = i % cols;
      const x = Math.floor((box[0] + c * cellW) * sx), y = Math.floor((box[1] + r * cellH) * sy);
      context.fillStyle = colour(stops, place(v));
      context.fillRect(x, y, Math.ceil((box[0] + (c + 1) * cellW) * sx) - x,
                       Math.ceil((box[1] + (r + 1) * cellH) * sy) - y);
    });
    return `${rows}×${cols} grid cells over the part of the picture the grid extractor sees`;
  }
  if (!explanation.regions) return "no region map: " + explanation.missing.join("; ");
  const boxes = explanation.regions.boxes;
  const order = values.map((_, i) => i).sort((a, b) => values[a] - values[b]);
  context.lineWidth = 2 * line;
  for (const i of order) {
    const [x1, y1, x2, y2] = [boxes[i][0] * sx, boxes[i][1] * sy, boxes[i][2] * sx, boxes[i][3] * sy];
    context.fillStyle = colour(stops, place(values[i]), 0.45);
    context.fillRect(x1, y1, x2 - x1, y2 - y1);
    context.strokeStyle = colour(stops, place(values[i]));
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  return `${boxes.length} detected regions, the most attended drawn on top`;
}

// A number of the scale, with as many decimals as the span between ticks needs.
export function tickText(value, span) {
  const decimals = span > 0 ? Math.min(6, Math.max(0, 1 - Math.floor(Math.log10(span)))) : 3;
  return value.toFixed(decimals);
}

// The colour bar and its tick labels from the map's lowest to its highest value.
export function drawScale(bar, ticks, stops, values) {
  const context = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    context.fillStyle = colour(stops, x / (bar.width - 1));
    context.fillRect(x, 0, 1, bar.height);
  }
  const { low, high } = range(values);
  const count = high > low ? 5 : 1;
  const step = (high - low) / Math.max(count - 1, 1);
  ticks.replaceChildren(...Array.from({ length: count }, (_, i) => {
    const tick = document.createElement("li");
    tick.textContent = tickText(low + i * step, step || Math.abs(low));
    tick.style.left = count > 1 ? `${(100 * i) / (count - 1)}%` : "50%";
    return tick;
  }));
  return { low, high };
}
