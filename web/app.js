// onnxcam's browser demo: a baked file (`onnxcam bake --raw-image --overlay`) run by onnxruntime-web.
//
// Query parameters: ?model=URL (default model.onnx), ?info=URL (`onnxcam info --json` of it, optional;
// default: the model's URL with .json for .onnx), ?plain=URL (a plain model, float32 NCHW input: time
// both files in this browser), ?runs=N (timed runs each, default 20).
// For tests: window.onnxcamResult after an image, window.onnxcamLatency after timing, and
// #status's data-state: loading, ready, running, timing, done or error.
"use strict";

const params = new URLSearchParams(location.search);
const MODEL_URL = params.get("model") || "model.onnx";
const INFO_URL = params.get("info") || MODEL_URL.replace(/\.onnx$/, ".json");
const PLAIN_URL = params.get("plain");
const RUNS = Number(params.get("runs") || 20);
const TOP = 5;

ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = 1;

const $ = (id) => document.getElementById(id);
const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
let baked, info, rawSize;

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

/** The `onnxcam info --json` record of the baked file, or null (it is optional). */
async function loadInfo(url) {
  try {
    const response = await fetch(url);
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** [h0, w0] of the `image` input: from the session's input metadata, else from the record. */
function imageSize(session, record) {
  const meta = session.inputMetadata.find((item) => item.name === "image");
  const shape = meta && meta.shape.length === 4 ? meta.shape : record?.input?.shape;
  if (!shape || typeof shape[1] !== "number" || typeof shape[2] !== "number") {
    throw new Error("the model has no fixed-size `image` input: bake it with --raw-image");
  }
  return [shape[1], shape[2]];
}

/** Draw `bitmap` scaled to cover height × width and centre-cropped (an image of that size is copied as is). */
function drawCovering(canvas, bitmap, height, width) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const scale = Math.max(width / bitmap.width, height / bitmap.height);
  const sw = width / scale, sh = height / scale;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, (bitmap.width - sw) / 2, (bitmap.height - sh) / 2, sw, sh, 0, 0, width, height);
  return context.getImageData(0, 0, width, height);
}

/** RGBA pixels → the uint8 [1, h, w, 3] RGB tensor the baked file takes. */
function imageTensor(pixels) {
  const rgb = new Uint8Array(pixels.width * pixels.height * 3);
  for (let i = 0, j = 0; i < pixels.data.length; i += 4, j += 3) {
    rgb[j] = pixels.data[i];
    rgb[j + 1] = pixels.data[i + 1];
    rgb[j + 2] = pixels.data[i + 2];
  }
  return new ort.Tensor("uint8", rgb, [1, pixels.height, pixels.width, 3]);
}

/** Draw RGB bytes (height × width × 3) onto a canvas. */
function drawRgb(canvas, rgb, height, width) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let i = 0, j = 0; j < height * width * 3; i += 4, j += 3) {
    pixels.data.set([rgb[j], rgb[j + 1], rgb[j + 2], 255], i);
  }
  context.putImageData(pixels, 0, 0);
}

const labelOf = (index) => info?.explainer?.labels?.[index] ?? `class ${index}`;

/** The `count` most probable classes: softmax of one image's logits. */
function topClasses(logits, count) {
  const largest = Math.max(...logits);
  const exps = Array.from(logits, (value) => Math.exp(value - largest));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e, index) => ({ index, label: labelOf(index), probability: e / total }))
    .sort((a, b) => b.probability - a.probability).slice(0, count);
}

/** Run the baked file on an image file; draw the view, the overlay and the top classes. */
async function explain(file) {
  setStatus("running", `explaining ${file.name}…`);
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const [h0, w0] = rawSize;
  const pixels = drawCovering($("input"), bitmap, h0, w0);
  const start = performance.now();
  const out = await baked.run({ image: imageTensor(pixels) });
  const runMs = performance.now() - start;
  const [, , height, width] = out.maps.dims;
  drawRgb($("view"), out.view.data, height, width);
  drawRgb($("overlay"), out.overlay.data, height, width);
  const classes = out.logits.dims[1];
  const top = topClasses(out.logits.data.subarray(0, classes), TOP);
  const target = Number(out.targets.data[0]);
  $("explained").textContent = `${info?.method ?? "map"} of '${labelOf(target)}'`;
  $("top").replaceChildren(...top.map((item) => {
    const entry = document.createElement("li");
    entry.textContent = `${item.label} (${item.index}): ${(100 * item.probability).toFixed(1)}%`;
    return entry;
  }));
  window.onnxcamResult = {
    shape: out.maps.dims, map: Array.from(out.maps.data.subarray(0, height * width)),
    top, target, score: out.scores.data[0], runMs,
  };
  setStatus("done", `${file.name}: ${labelOf(target)} in ${runMs.toFixed(0)} ms`);
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** Median milliseconds of the baked file and of the plain model at ?plain=, alternating `runs` runs each. */
async function timeAgainstPlain(runs) {
  setStatus("timing", `timing ${runs} runs of each model…`);
  const plain = await ort.InferenceSession.create(PLAIN_URL, options);
  const [, channels, height, width] = plain.inputMetadata[0].shape;
  const bakedFeeds = { image: new ort.Tensor("uint8", new Uint8Array(rawSize[0] * rawSize[1] * 3).fill(128),
    [1, rawSize[0], rawSize[1], 3]) };
  const plainFeeds = { [plain.inputNames[0]]: new ort.Tensor("float32",
    new Float32Array(channels * height * width), [1, channels, height, width]) };
  const timed = async (session, feeds) => {
    const start = performance.now();
    await session.run(feeds);
    return performance.now() - start;
  };
  await timed(baked, bakedFeeds);  // warm-up: first runs allocate
  await timed(plain, plainFeeds);
  const bakedMs = [], plainMs = [];
  for (let i = 0; i < runs; i++) {
    bakedMs.push(await timed(baked, bakedFeeds));
    plainMs.push(await timed(plain, plainFeeds));
  }
  window.onnxcamLatency = { bakedMs: median(bakedMs), plainMs: median(plainMs), runs, ort: ort.env.versions.web };
  const { bakedMs: b, plainMs: p } = window.onnxcamLatency;
  setStatus("done", `median of ${runs}: baked ${b.toFixed(1)} ms, plain ${p.toFixed(1)} ms, ` +
    `plain/baked ${(p / b).toFixed(2)}`);
}

async function main() {
  [baked, info] = await Promise.all([ort.InferenceSession.create(MODEL_URL, options), loadInfo(INFO_URL)]);
  rawSize = imageSize(baked, info);
  setStatus("ready", `model ready: choose an image (it is drawn at ${rawSize[0]}x${rawSize[1]})`);
  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) explain(file).catch(fail);
  });
  if (PLAIN_URL) await timeAgainstPlain(RUNS);
}

function fail(error) {
  setStatus("error", `error: ${error.message ?? error}`);
}

main().catch(fail);
