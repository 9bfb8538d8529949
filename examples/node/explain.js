#!/usr/bin/env node
// Grad-CAM from Node.js with a baked onnxcam file: onnxruntime-node and a PNG codec, nothing else.
//
//   onnxcam bake model.onnx -m gradcam --raw-image --raw-size 300x451 --overlay -o baked.onnx
//   onnxcam info --json baked.onnx > record.json        # optional: class labels
//   npm ci --prefix examples/node
//   node examples/node/explain.js baked.onnx photo.png overlay.png [record.json]
//
// Prints the top class (id, label, probability, the explained score) and writes the heatmap
// blended over the image as the model saw it. The image must have the size baked in (--raw-size).
'use strict';

const fs = require('fs');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');

async function main([modelPath, imagePath, outPath, recordPath]) {
  if (!outPath) throw new Error('usage: node explain.js BAKED.onnx IMAGE.png OUT.png [record.json]');
  const record = recordPath ? JSON.parse(fs.readFileSync(recordPath, 'utf8')) : null;
  const labels = record?.explainer?.labels ?? null;
  const session = await ort.InferenceSession.create(modelPath);

  // The raw input: `image` uint8 [N, height, width, 3], its size fixed when the file was baked.
  const input = session.inputMetadata.find((m) => m.name === 'image');
  if (!input || input.type !== 'uint8' || !session.outputNames.includes('overlay')) {
    throw new Error(`${modelPath} is not baked for raw images with an overlay: bake it with ` +
                    `\`onnxcam bake ... --raw-image --overlay\``);
  }
  const [, height, width] = input.shape;

  // The PNG as RGB bytes (pngjs decodes any PNG to 8-bit RGBA; the alpha is dropped).
  let png;
  try { png = PNG.sync.read(fs.readFileSync(imagePath)); } catch (e) { throw new Error(`${imagePath}: ${e.message}`); }
  if (png.width !== width || png.height !== height) {
    throw new Error(`${imagePath} is ${png.height}x${png.width} (HxW) but ${modelPath} takes ${height}x${width}: ` +
                    `bake it with \`onnxcam bake ... --raw-size ${png.height}x${png.width}\``);
  }
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) rgb.set(png.data.subarray(4 * i, 4 * i + 3), 3 * i);

  // One call: the target is baked in (default: each image's top class), so `image` is the only feed.
  const out = await session.run({ image: new ort.Tensor('uint8', rgb, [1, height, width, 3]) });

  const logits = Array.from(out.logits.data);
  const top = logits.indexOf(Math.max(...logits));
  const sum = logits.reduce((s, v) => s + Math.exp(v - logits[top]), 0);
  const probability = 1 / sum;  // softmax of the logits at the top class
  const explained = Number(out.targets.data[0]);  // int64 arrives as a BigInt
  const name = (id) => (labels ? `${id} '${labels[id]}'` : `${id}`);
  const score = `score=${out.scores.data[0].toPrecision(4)}`;  // what the map explains (here: the logit)
  const line = `${imagePath}: top ${name(top)} p=${probability.toFixed(3)}` +
               (explained === top ? ` ${score}` : `; explained ${name(explained)} ${score}`);
  console.log(line);

  // overlay: uint8 [N, K, H, W, 3]; the first image's first target, written as an RGB PNG.
  const [, , viewHeight, viewWidth] = out.overlay.dims;
  const picture = new PNG({ width: viewWidth, height: viewHeight, colorType: 2, inputColorType: 2 });
  picture.data = Buffer.from(out.overlay.data.subarray(0, viewHeight * viewWidth * 3));
  fs.writeFileSync(outPath, PNG.sync.write(picture, { colorType: 2, inputColorType: 2 }));
  console.log(`wrote ${outPath} (${viewHeight}x${viewWidth})`);
}

main(process.argv.slice(2)).catch((error) => {
  console.error(`Error: ${String(error.message ?? error).split('\n')[0]}`);
  process.exit(1);
});
