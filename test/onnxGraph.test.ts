// ONNX export checked three ways: a tiny model whose logits are worked out by hand below,
// a plain float64 TypeScript reference forward pass (kept here, not in src) on the three
// real architectures with random weights, and the native engine's own forward pass when
// build/Release/maml_native.node is built. Both batch-norm modes are checked each time:
//   'support': the reference with the support batch's statistics frozen;
//   'batch':   the reference with the statistics of the batch being classified.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import type { BatchNormStatistics, LayerEntry, ParameterEntry } from '../src/native/engine.js';
import { buildOnnxModel, type BatchNormExport } from '../src/onnx/graph.js';
import { createSession, readMetadata, run, runLogits, closeSession } from '../src/onnx/runtime.js';
import { decodeModel } from '../src/onnx/schema.js';
import { exportMetadata, formatPredictions, parseModelMetadata, predict } from '../src/onnx/predict.js';
import { decodeBmp, loadImagesForPrediction, loadSupportFolder, type Preprocessing } from '../src/onnx/supportFolder.js';

// ---------------------------------------------------------------- the reference (float64)

type Arch = 'omniglot' | 'miniimagenet' | 'mlp';

interface Table {
  layers: LayerEntry[];
  parameters: ParameterEntry[];
  count: number;
  input: [number, number, number];
}

/** The layer and parameter tables of the native architecture (architecture.cpp), rebuilt in TS. */
function referenceTable(arch: Arch, ways: number): Table {
  const layers: LayerEntry[] = [];
  const parameters: ParameterEntry[] = [];
  let count = 0;
  const add = (name: string, shape: number[], adapted: boolean): number => {
    const size = shape.reduce((a, b) => a * b, 1);
    parameters.push({ name, shape, offset: count, size, adapted });
    count += size;
    return count - size;
  };
  const base = { stride: 1, padTop: 0, padLeft: 0, hasScale: false, weight: -1, bias: -1 };
  let cur: [number, number, number] = arch === 'miniimagenet' ? [3, 84, 84] : [1, 28, 28];
  const input = cur;
  const same = (size: number, stride: number): [number, number] => {
    const out = Math.ceil(size / stride);
    return [out, Math.floor(Math.max((out - 1) * stride + 3 - size, 0) / 2)];
  };
  if (arch === 'mlp') {
    [256, 128, 64, 64].forEach((h, i) => {
      const weight = add(`fc${i + 1}.weight`, [h, cur[0] * cur[1] * cur[2]], true);
      const bias = add(`fc${i + 1}.bias`, [h], true);
      layers.push({ ...base, kind: 'linear', in: cur, out: [h, 1, 1], weight, bias });
      cur = [h, 1, 1];
      layers.push({ ...base, kind: 'batchnorm', in: cur, out: cur, bias: add(`bn${i + 1}.bias`, [h], false) });
      layers.push({ ...base, kind: 'relu', in: cur, out: cur });
    });
  } else {
    const omniglot = arch === 'omniglot';
    const filters = omniglot ? 64 : 32;
    const stride = omniglot ? 2 : 1;
    for (let b = 1; b <= 4; ++b) {
      const [oh, pt] = same(cur[1], stride);
      const [ow, pl] = same(cur[2], stride);
      const weight = add(`conv${b}.weight`, [filters, cur[0], 3, 3], true);
      const bias = add(`conv${b}.bias`, [filters], true);
      layers.push({ ...base, kind: 'conv3x3', in: cur, out: [filters, oh, ow], stride, padTop: pt, padLeft: pl, weight, bias });
      cur = [filters, oh, ow];
      layers.push({ ...base, kind: 'batchnorm', in: cur, out: cur, bias: add(`bn${b}.bias`, [filters], false) });
      layers.push({ ...base, kind: 'relu', in: cur, out: cur });
      if (!omniglot) {
        const next: [number, number, number] = [filters, Math.floor(cur[1] / 2), Math.floor(cur[2] / 2)];
        layers.push({ ...base, kind: 'maxpool2', in: cur, out: next });
        cur = next;
      }
    }
    if (omniglot) {
      layers.push({ ...base, kind: 'spatialmean', in: cur, out: [filters, 1, 1] });
      cur = [filters, 1, 1];
    }
  }
  const features = cur[0] * cur[1] * cur[2];
  const weight = add('head.weight', [ways, features], true);
  const bias = add('head.bias', [ways], true);
  layers.push({ ...base, kind: 'linear', in: cur, out: [ways, 1, 1], weight, bias });
  return { layers, parameters, count, input };
}

/**
 * Plain forward pass in float64: activations are [n, C*H*W] in C, H, W order.
 * frozen: statistics to use per batch-norm layer (support mode); otherwise the batch's own.
 * Returns the logits and the statistics each batch-norm layer used.
 */
function referenceForward(layers: LayerEntry[], w: ArrayLike<number>, images: ArrayLike<number>, n: number, epsilon: number,
                          frozen?: BatchNormStatistics[]): { logits: Float64Array; stats: BatchNormStatistics[] } {
  let x = Float64Array.from(images);
  const stats: BatchNormStatistics[] = [];
  layers.forEach((l, index) => {
    const [C, H, W] = l.in;
    const [O, OH, OW] = l.out;
    const inSize = C * H * W;
    if (l.kind === 'conv3x3') {
      const y = new Float64Array(n * O * OH * OW);
      for (let e = 0; e < n; ++e)
        for (let o = 0; o < O; ++o)
          for (let oy = 0; oy < OH; ++oy)
            for (let ox = 0; ox < OW; ++ox) {
              let sum = l.bias >= 0 ? w[l.bias + o] : 0;
              for (let c = 0; c < C; ++c)
                for (let ky = 0; ky < 3; ++ky) {
                  const iy = oy * l.stride + ky - l.padTop;
                  if (iy < 0 || iy >= H) continue;
                  for (let kx = 0; kx < 3; ++kx) {
                    const ix = ox * l.stride + kx - l.padLeft;
                    if (ix < 0 || ix >= W) continue;
                    sum += w[l.weight + ((o * C + c) * 3 + ky) * 3 + kx] * x[e * inSize + (c * H + iy) * W + ix];
                  }
                }
              y[e * O * OH * OW + (o * OH + oy) * OW + ox] = sum;
            }
      x = y;
    } else if (l.kind === 'batchnorm') {
      const plane = H * W;
      const given = frozen?.find((s) => s.layer === index);
      const mean = new Float64Array(C);
      const variance = new Float64Array(C);
      for (let c = 0; c < C; ++c) {
        if (given) {
          mean[c] = given.mean[c];
          variance[c] = given.variance[c];
          continue;
        }
        let s = 0;
        for (let e = 0; e < n; ++e) for (let i = 0; i < plane; ++i) s += x[e * inSize + c * plane + i];
        mean[c] = s / (n * plane);
        let q = 0;
        for (let e = 0; e < n; ++e) for (let i = 0; i < plane; ++i) q += (x[e * inSize + c * plane + i] - mean[c]) ** 2;
        variance[c] = q / (n * plane); // biased
      }
      stats.push({ layer: index, mean, variance });
      const y = new Float64Array(x.length);
      for (let e = 0; e < n; ++e)
        for (let c = 0; c < C; ++c) {
          const g = l.hasScale && l.weight >= 0 ? w[l.weight + c] : 1;
          const b = l.bias >= 0 ? w[l.bias + c] : 0;
          const inv = 1 / Math.sqrt(variance[c] + epsilon);
          for (let i = 0; i < plane; ++i) {
            const k = e * inSize + c * plane + i;
            y[k] = g * (x[k] - mean[c]) * inv + b;
          }
        }
      x = y;
    } else if (l.kind === 'relu') {
      x = x.map((v) => (v > 0 ? v : 0));
    } else if (l.kind === 'maxpool2') {
      const y = new Float64Array(n * O * OH * OW);
      for (let e = 0; e < n; ++e)
        for (let c = 0; c < C; ++c)
          for (let oy = 0; oy < OH; ++oy)
            for (let ox = 0; ox < OW; ++ox) {
              let m = -Infinity;
              for (let dy = 0; dy < 2; ++dy)
                for (let dx = 0; dx < 2; ++dx) m = Math.max(m, x[e * inSize + (c * H + 2 * oy + dy) * W + 2 * ox + dx]);
              y[e * O * OH * OW + (c * OH + oy) * OW + ox] = m;
            }
      x = y;
    } else if (l.kind === 'spatialmean') {
      const y = new Float64Array(n * C);
      for (let e = 0; e < n; ++e)
        for (let c = 0; c < C; ++c) {
          let s = 0;
          for (let i = 0; i < H * W; ++i) s += x[e * inSize + c * H * W + i];
          y[e * C + c] = s / (H * W);
        }
      x = y;
    } else if (l.kind === 'linear') {
      const y = new Float64Array(n * O);
      for (let e = 0; e < n; ++e)
        for (let o = 0; o < O; ++o) {
          let s = l.bias >= 0 ? w[l.bias + o] : 0;
          for (let f = 0; f < inSize; ++f) s += w[l.weight + o * inSize + f] * x[e * inSize + f];
          y[e * O + o] = s;
        }
      x = y;
    }
  });
  return { logits: x, stats };
}

/** mulberry32: small seeded generator for test data */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Glorot-uniform-like weights for conv/linear, small random batch-norm offsets (and gamma when present). */
function randomWeights(table: Table, seed: number): Float32Array {
  const r = random(seed);
  const w = new Float32Array(table.count);
  for (const p of table.parameters) {
    const fanIn = p.shape.length === 4 ? p.shape[1] * 9 : p.shape.length === 2 ? p.shape[1] : 0;
    const fanOut = p.shape.length === 4 ? p.shape[0] * 9 : p.shape.length === 2 ? p.shape[0] : 0;
    const limit = fanIn ? Math.sqrt(6 / (fanIn + fanOut)) : 0.1;
    for (let i = 0; i < p.size; ++i) w[p.offset + i] = (2 * r() - 1) * limit + (p.name.endsWith('bias') ? 0.05 : 0);
  }
  return w;
}

function randomImages(n: number, shape: [number, number, number], seed: number): Float32Array {
  const r = random(seed);
  return Float32Array.from({ length: n * shape[0] * shape[1] * shape[2] }, () => Math.fround(Math.floor(r() * 256) / 255));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'lengths differ');
  let m = 0;
  for (let i = 0; i < a.length; ++i) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; ++i) m = Math.max(m, Math.abs(a[i]));
  return m;
}

async function onnxLogits(model: Uint8Array, images: Float32Array, n: number, shape: [number, number, number]): Promise<Float32Array> {
  const session = await createSession(model, { provider: 'cpu', threads: 1 });
  try {
    return await runLogits(session, images, n, shape);
  } finally {
    await closeSession(session);
  }
}

const EPSILON = 1e-3;
const ARCHS: Arch[] = ['omniglot', 'miniimagenet', 'mlp'];

// ---------------------------------------------------------------- (1) by hand

test('a tiny model: logits worked out by hand', async () => {
  // conv 1 -> 1 channel, 3x3 kernel, stride 1, pads 1 on every side, on a 3x3 image
  //   x = [[1,2,3],[4,5,6],[7,8,9]], kernel k = [[0,1,0],[1,-1,0],[0,0,2]], bias 0.5
  //   z(i,j) = x(i-1,j) + x(i,j-1) - x(i,j) + 2 x(i+1,j+1) + 0.5   (x = 0 outside)
  //   z = [[ 0+0-1+10, 0+1-2+12, 0+2-3+0 ],      [[ 9.5, 11.5, -0.5],
  //        [ 1+0-4+16, 2+4-5+18, 3+5-6+0 ],  =    [13.5, 19.5,  2.5],
  //        [ 4+0-7+0,  5+7-8+0,  6+8-9+0 ]] + .5  [-2.5,  4.5,  5.5]]
  // batch norm 'support': mean 4, variance 3.999, epsilon 0.001 (sqrt(4) = 2), gamma 0.5, beta 1
  //   y = 0.5 (z - 4) / 2 + 1 = z / 4
  //     = [2.375, 2.875, -0.125, 3.375, 4.875, 0.625, -0.625, 1.125, 1.375]
  // relu, then the mean of the 9 positions: (2.375+2.875+3.375+4.875+0.625+1.125+1.375) / 9
  //   = 16.625 / 9 = 133/72
  // linear 1 -> 2, W = [[2], [-1]], b = [0.25, 3]: logits = [266/72 + 18/72, 3 - 133/72] = [284/72, 83/72]
  // A second image of zeros: z = 0.5, y = 0.125, mean 0.125, logits = [0.5, 2.875] (support
  // statistics are frozen, so the first image does not change the second's logits).
  const weights = Float32Array.of(
    0, 1, 0, 1, -1, 0, 0, 0, 2, // conv.weight [1, 1, 3, 3]   offset 0
    0.5, //                        conv.bias                   offset 9
    0.5, //                        bn.weight (gamma)           offset 10
    1, //                          bn.bias (beta)              offset 11
    2, -1, //                      head.weight [2, 1]          offset 12
    0.25, 3, //                    head.bias                   offset 14
  );
  const base = { stride: 1, padTop: 0, padLeft: 0, hasScale: false, weight: -1, bias: -1 };
  const layers: LayerEntry[] = [
    { ...base, kind: 'conv3x3', in: [1, 3, 3], out: [1, 3, 3], padTop: 1, padLeft: 1, weight: 0, bias: 9 },
    { ...base, kind: 'batchnorm', in: [1, 3, 3], out: [1, 3, 3], hasScale: true, weight: 10, bias: 11 },
    { ...base, kind: 'relu', in: [1, 3, 3], out: [1, 3, 3] },
    { ...base, kind: 'spatialmean', in: [1, 3, 3], out: [1, 1, 1] },
    { ...base, kind: 'linear', in: [1, 1, 1], out: [2, 1, 1], weight: 12, bias: 14 },
  ];
  const parameters: ParameterEntry[] = [
    { name: 'conv1.weight', shape: [1, 1, 3, 3], offset: 0, size: 9, adapted: true },
    { name: 'conv1.bias', shape: [1], offset: 9, size: 1, adapted: true },
    { name: 'bn1.weight', shape: [1], offset: 10, size: 1, adapted: false },
    { name: 'bn1.bias', shape: [1], offset: 11, size: 1, adapted: false },
    { name: 'head.weight', shape: [2, 1], offset: 12, size: 2, adapted: true },
    { name: 'head.bias', shape: [2], offset: 14, size: 2, adapted: true },
  ];
  const model = buildOnnxModel({
    layers, parameters, weights, batchNorm: 'support', epsilon: 0.001, inputShape: [1, 3, 3], outputs: 2, metadata: {},
    supportStatistics: [{ layer: 1, mean: Float64Array.of(4), variance: Float64Array.of(3.999) }],
  });
  const images = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const logits = await onnxLogits(model, images, 2, [1, 3, 3]);
  const expected = [284 / 72, 83 / 72, 0.5, 2.875];
  assert.ok(maxAbsDiff(logits, expected) < 1e-6, `logits ${[...logits]} expected ${expected}`);
  // and the reference agrees with the hand arithmetic
  const ref = referenceForward(layers, weights, images, 2, 0.001, [{ layer: 1, mean: Float64Array.of(4), variance: Float64Array.of(3.999) }]);
  assert.ok(maxAbsDiff(ref.logits, expected) < 1e-6);
  // probabilities are the softmax of the logits
  const session = await createSession(model, { provider: 'cpu' });
  const { probabilities } = await run(session, images, 2, [1, 3, 3]);
  const p0 = 1 / (1 + Math.exp(83 / 72 - 284 / 72));
  assert.ok(Math.abs(probabilities[0] - p0) < 1e-6 && Math.abs(probabilities[1] - (1 - p0)) < 1e-6);
  await closeSession(session);
});

// ---------------------------------------------------------------- (2) reference, real sizes

for (const arch of ARCHS) {
  test(`${arch}: exported logits equal the reference forward, batch norm 'support' and 'batch'`, async (t) => {
    const ways = 5;
    const table = referenceTable(arch, ways);
    const weights = randomWeights(table, 17);
    const [ns, nq] = arch === 'miniimagenet' ? [3, 2] : [5, 4]; // the float64 reference conv is slow at 84x84
    const support = randomImages(ns, table.input, 1);
    const query = randomImages(nq, table.input, 2);
    const frozen = referenceForward(table.layers, weights, support, ns, EPSILON).stats;

    const supportModel = buildOnnxModel({
      layers: table.layers, parameters: table.parameters, weights, batchNorm: 'support', supportStatistics: frozen,
      epsilon: EPSILON, inputShape: table.input, outputs: ways, metadata: {},
    });
    const started = Date.now();
    const expectedSupport = referenceForward(table.layers, weights, query, nq, EPSILON, frozen).logits;
    const gotSupport = await onnxLogits(supportModel, query, nq, table.input);
    const scale = Math.max(1, maxAbs(expectedSupport));
    t.diagnostic(`support: max |onnx - reference| ${maxAbsDiff(gotSupport, expectedSupport).toExponential(2)}, max |logit| ${maxAbs(expectedSupport).toFixed(3)} (reference ${Date.now() - started} ms)`);
    assert.ok(maxAbsDiff(gotSupport, expectedSupport) < 1e-5 * scale, `support mode differs by ${maxAbsDiff(gotSupport, expectedSupport)}`);
    // support mode: one image alone gives the same logits as in the batch
    const each = table.input[0] * table.input[1] * table.input[2];
    const alone = await onnxLogits(supportModel, query.slice(0, each), 1, table.input);
    assert.ok(maxAbsDiff(alone, gotSupport.subarray(0, ways)) < 1e-6);

    const batchModel = buildOnnxModel({
      layers: table.layers, parameters: table.parameters, weights: Float64Array.from(weights), batchNorm: 'batch',
      epsilon: EPSILON, inputShape: table.input, outputs: ways, metadata: {},
    });
    const expectedBatch = referenceForward(table.layers, weights, query, nq, EPSILON).logits;
    const gotBatch = await onnxLogits(batchModel, query, nq, table.input);
    t.diagnostic(`batch: max |onnx - reference| ${maxAbsDiff(gotBatch, expectedBatch).toExponential(2)}, max |logit| ${maxAbs(expectedBatch).toFixed(3)}`);
    assert.ok(maxAbsDiff(gotBatch, expectedBatch) < 1e-5 * Math.max(1, maxAbs(expectedBatch)), `batch mode differs by ${maxAbsDiff(gotBatch, expectedBatch)}`);
    // the two modes really differ (the query batch's statistics are not the support set's)
    assert.ok(maxAbsDiff(gotBatch, gotSupport) > 1e-3);
  });
}

test('export rejects inconsistent tables with errors that name the layer', () => {
  const table = referenceTable('omniglot', 5);
  const weights = randomWeights(table, 3);
  const common = { layers: table.layers, parameters: table.parameters, weights, epsilon: EPSILON, inputShape: table.input, outputs: 5, metadata: {} };
  assert.throws(() => buildOnnxModel({ ...common, batchNorm: 'support' }), /support set's statistics of layer 1/);
  assert.throws(() => buildOnnxModel({ ...common, batchNorm: 'batch', weights: weights.subarray(0, 100) }), /layer 0 \(conv3x3\): weight .* outside/);
  assert.throws(() => buildOnnxModel({ ...common, batchNorm: 'batch', outputs: 4 }), /5 outputs, outputs says 4/);
  assert.throws(() => buildOnnxModel({ ...common, batchNorm: 'batch', inputShape: [3, 28, 28] }), /layer 0 \(conv3x3\) expects input \[1, 28, 28\]/);
});

// ---------------------------------------------------------------- (3) metadata

test('metadata round-trips through the model file, and the graph has the promised shape', async () => {
  const table = referenceTable('omniglot', 3);
  const meta = exportMetadata({
    classNames: ['alpha', 'beta', 'ünïcödé'],
    preprocessing: { channels: 1, height: 28, width: 28, invert: true },
    dataset: 'omniglot', steps: 10, batchNorm: 'batch', checkpoint: 'runs/a/checkpoint.json', architecture: 'omniglot',
    extra: { note: 'x' },
  });
  const model = buildOnnxModel({
    layers: table.layers, parameters: table.parameters, weights: randomWeights(table, 1), batchNorm: 'batch',
    epsilon: EPSILON, inputShape: table.input, outputs: 3, metadata: meta,
  });
  assert.deepEqual(await readMetadata(model), meta);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'onnx-meta-'));
  try {
    const file = path.join(dir, 'm.onnx');
    await fs.writeFile(file, model);
    assert.deepEqual(await readMetadata(file), meta);
    const session = await createSession(file, { provider: 'cpu' });
    assert.deepEqual(await readMetadata(session), meta);
    assert.deepEqual(session.session.inputNames, ['images']);
    assert.deepEqual(session.session.outputNames, ['logits', 'probabilities']);
    await closeSession(session);
    const parsed = parseModelMetadata(meta);
    assert.deepEqual(parsed.classNames, ['alpha', 'beta', 'ünïcödé']);
    assert.deepEqual(parsed.preprocessing, { channels: 1, height: 28, width: 28, invert: true });
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  const decoded = decodeModel(model);
  assert.equal(decoded.irVersion, 8);
  assert.deepEqual(decoded.opsetImport.map((o) => o.version), [17]);
  const dims = decoded.graph.input[0].type.tensorType.shape.dim;
  assert.deepEqual(dims, [{ dimParam: 'batch' }, { dimValue: 1 }, { dimValue: 28 }, { dimValue: 28 }]);
  const conv = decoded.graph.node.find((n) => n.opType === 'Conv')!;
  assert.deepEqual(conv.attribute.find((a) => a.name === 'pads')!.ints, [0, 0, 1, 1]); // TF SAME 28 -> 14
  assert.throws(() => parseModelMetadata({}, 'm.onnx'), /m.onnx has no 'maml.class_names' metadata/);
  await assert.rejects(readMetadata(Uint8Array.of(0xff, 0xff, 0xff)), /not an ONNX model/);
});

test("asking for CUDA falls back to the CPU provider with a one-line notice when CUDA can't be used", async () => {
  const table = referenceTable('mlp', 2);
  const model = buildOnnxModel({
    layers: table.layers, parameters: table.parameters, weights: randomWeights(table, 1), batchNorm: 'batch',
    epsilon: EPSILON, inputShape: table.input, outputs: 2, metadata: {},
  });
  const notices: string[] = [];
  const session = await createSession(model, { provider: 'cuda', notice: (line) => notices.push(line) });
  if (session.provider === 'cpu') {
    assert.equal(notices.length, 1);
    assert.match(notices[0], /CUDA execution provider is not available.*using the CPU provider/);
    assert.ok(!notices[0].includes('\n'));
  } else {
    assert.equal(notices.length, 0);
  }
  const logits = await runLogits(session, randomImages(3, table.input, 4), 3, table.input);
  assert.equal(logits.length, 6);
  await closeSession(session);
});

// ---------------------------------------------------------------- (4) support folders

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    const full = path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
    const s = await fs.stat(full);
    out.push(`${path.relative(dir, full)} ${s.size} ${s.mtimeMs}`);
  }
  return out.sort();
}

async function png(file: string, width: number, height: number, channels: 1 | 3 | 4, value: (x: number, y: number, c: number) => number): Promise<void> {
  const data = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; ++y) for (let x = 0; x < width; ++x) for (let c = 0; c < channels; ++c) data[(y * width + x) * channels + c] = value(x, y, c);
  await fs.mkdir(path.dirname(file), { recursive: true });
  let image = sharp(data, { raw: { width, height, channels } });
  if (channels === 1) image = image.toColourspace('b-w');
  await image.png().toFile(file);
}

/** A 24-bit bottom-up BMP written byte by byte. */
function bmp24(width: number, height: number, rgb: (x: number, y: number) => [number, number, number]): Buffer {
  const stride = Math.ceil((width * 3) / 4) * 4;
  const b = Buffer.alloc(54 + stride * height);
  b.write('BM', 0, 'ascii');
  b.writeUInt32LE(b.length, 2);
  b.writeUInt32LE(54, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(width, 18);
  b.writeInt32LE(height, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(24, 28);
  for (let y = 0; y < height; ++y)
    for (let x = 0; x < width; ++x) {
      const [r, g, bl] = rgb(x, y);
      const o = 54 + (height - 1 - y) * stride + x * 3;
      b[o] = bl;
      b[o + 1] = g;
      b[o + 2] = r;
    }
  return b;
}

test('support folder: classes sorted, labels, scaling (pixel/255, inverted), channels made to fit', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'support-'));
  try {
    // 'b' has a greyscale image and an RGBA one; 'a' an RGB one and a BMP; a stray text file is skipped
    await png(path.join(dir, 'b', '1.png'), 28, 28, 1, () => 51);
    await png(path.join(dir, 'b', '2.png'), 28, 28, 4, (x, y, c) => [255, 0, 0, 255][c]);
    await png(path.join(dir, 'a', '1.png'), 28, 28, 3, (x, y, c) => [10, 20, 30][c]);
    await fs.writeFile(path.join(dir, 'a', '2.bmp'), bmp24(28, 28, () => [10, 20, 30]));
    await fs.writeFile(path.join(dir, 'a', 'notes.txt'), 'not an image');
    await fs.writeFile(path.join(dir, 'a', '.DS_Store'), 'junk');
    const before = await listing(dir);

    const grey: Preprocessing = { channels: 1, height: 28, width: 28, invert: true };
    const set = await loadSupportFolder(dir, grey);
    assert.deepEqual(set.classNames, ['a', 'b']);
    assert.deepEqual([...set.labels], [0, 0, 1, 1]);
    assert.deepEqual(set.files.map((f) => path.relative(dir, f)), [path.join('a', '1.png'), path.join('a', '2.bmp'), path.join('b', '1.png'), path.join('b', '2.png')]);
    assert.deepEqual(set.skipped.map((f) => path.basename(f)), ['notes.txt']);
    assert.equal(set.images.length, 4 * 28 * 28);
    // the grey image: 1 - 51/255 = 0.8 in float32 arithmetic, as the native image gather
    const expectedGrey = Math.fround(1 - Math.fround(51 * Math.fround(1 / 255)));
    assert.ok(set.images.subarray(2 * 784, 3 * 784).every((v) => v === expectedGrey));
    // the PNG and the BMP of the same colour decode identically
    assert.deepEqual(set.images.subarray(0, 784), set.images.subarray(784, 1568));

    const rgb: Preprocessing = { channels: 3, height: 84, width: 84, invert: false };
    const colour = await loadSupportFolder(dir, rgb);
    const plane = 84 * 84;
    const at = (image: number, c: number): number => colour.images[image * 3 * plane + c * plane + 100];
    // RGB as given, BMP the same, greyscale replicated into three channels, RGBA's alpha dropped
    assert.deepEqual([at(0, 0), at(0, 1), at(0, 2)].map((v) => Math.round(v * 255)), [10, 20, 30]);
    assert.deepEqual([at(1, 0), at(1, 1), at(1, 2)].map((v) => Math.round(v * 255)), [10, 20, 30]);
    assert.deepEqual([at(2, 0), at(2, 1), at(2, 2)].map((v) => Math.round(v * 255)), [51, 51, 51]);
    assert.deepEqual([at(3, 0), at(3, 1), at(3, 2)].map((v) => Math.round(v * 255)), [255, 0, 0]);
    assert.equal(colour.images.length, 4 * 3 * plane);
    assert.deepEqual(await listing(dir), before, 'loading a support folder wrote nothing');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('malformed support folders give errors that name the folder or file and the fix, and write nothing', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'support-bad-'));
  const p: Preprocessing = { channels: 1, height: 28, width: 28, invert: true };
  try {
    const make = async (name: string, setup: (root: string) => Promise<void>): Promise<string> => {
      const root = path.join(dir, name);
      await fs.mkdir(root, { recursive: true });
      await setup(root);
      return root;
    };
    const missing = path.join(dir, 'missing');
    await assert.rejects(loadSupportFolder(missing, p), (e: Error) => e.message.includes(missing) && /does not exist/.test(e.message));

    const flat = await make('flat', async (root) => {
      await png(path.join(root, 'x.png'), 8, 8, 1, () => 0);
    });
    await assert.rejects(loadSupportFolder(flat, p), /has no class sub-folders \(it holds 1 image file\(s\) directly\): put each class's images in their own sub-folder/);

    const one = await make('one', async (root) => {
      await png(path.join(root, 'only', 'x.png'), 8, 8, 1, () => 0);
    });
    await assert.rejects(loadSupportFolder(one, p), /has only one class \(only\): a classifier needs at least two class sub-folders/);

    const empty = await make('empty', async (root) => {
      await png(path.join(root, 'a', 'x.png'), 8, 8, 1, () => 0);
      await fs.mkdir(path.join(root, 'b'));
      await fs.writeFile(path.join(root, 'b', 'readme.txt'), 'hi');
    });
    await assert.rejects(loadSupportFolder(empty, p), (e: Error) =>
      e.message.includes(`class folder ${path.join(empty, 'b')} has no images (only readme.txt`) && e.message.includes("add at least one image of class 'b'"));

    const broken = await make('broken', async (root) => {
      await png(path.join(root, 'a', 'x.png'), 8, 8, 1, () => 0);
      await fs.mkdir(path.join(root, 'b'));
      await fs.writeFile(path.join(root, 'b', 'broken.png'), 'this is not a png');
    });
    await assert.rejects(loadSupportFolder(broken, p), (e: Error) =>
      e.message.startsWith(`cannot read image ${path.join(broken, 'b', 'broken.png')}:`) && e.message.includes('re-save it or remove it'));

    const truncated = await make('truncated', async (root) => {
      await png(path.join(root, 'a', 'x.png'), 8, 8, 1, () => 0);
      await fs.mkdir(path.join(root, 'b'));
      await fs.writeFile(path.join(root, 'b', 'cut.bmp'), bmp24(8, 8, () => [0, 0, 0]).subarray(0, 80));
    });
    await assert.rejects(loadSupportFolder(truncated, p), /cannot read image .*cut\.bmp: the file is truncated; convert it to PNG/);

    await assert.rejects(loadSupportFolder(one, { ...p, channels: 2 as 1 }), /preprocessing.channels must be 1 or 3, got 2/);
    await assert.rejects(loadImagesForPrediction([path.join(dir, 'nope.png')], p), /cannot read image .*nope\.png: ENOENT/);
    const before = await listing(dir);
    await loadSupportFolder(broken, p).catch(() => undefined);
    assert.deepEqual(await listing(dir), before);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('decodeBmp reads 8-bit palette and 32-bit top-down bitmaps', () => {
  // 2x1 8-bit palette: colours 0 = red, 1 = blue; top-down
  const b = Buffer.alloc(54 + 8 + 4);
  b.write('BM', 0, 'ascii');
  b.writeUInt32LE(54 + 8, 10);
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(2, 18);
  b.writeInt32LE(-1, 22);
  b.writeUInt16LE(1, 26);
  b.writeUInt16LE(8, 28);
  b.writeUInt32LE(2, 46);
  b.set([0, 0, 255, 0, 255, 0, 0, 0], 54); // BGRX red, blue
  b.set([1, 0, 0, 0], 62);
  const out = decodeBmp(b, 'x.bmp');
  assert.deepEqual([out.width, out.height, ...out.data], [2, 1, 0, 0, 255, 255, 255, 0, 0, 255]);
});

test('predict reads class names and preprocessing from the model and prints a table', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'predict-'));
  try {
    const table = referenceTable('omniglot', 2);
    const weights = randomWeights(table, 5);
    const p: Preprocessing = { channels: 1, height: 28, width: 28, invert: true };
    const files = [path.join(dir, 'q1.png'), path.join(dir, 'q2.png')];
    await png(files[0], 105, 105, 1, (x, y) => (x > 50 ? 0 : 255));
    await png(files[1], 105, 105, 1, (x, y) => (y > 50 ? 0 : 255));
    const images = await loadImagesForPrediction(files, p);
    const stats = referenceForward(table.layers, weights, images, 2, EPSILON).stats;
    const file = path.join(dir, 'adapted.onnx');
    await fs.writeFile(file, buildOnnxModel({
      layers: table.layers, parameters: table.parameters, weights, batchNorm: 'support', supportStatistics: stats, epsilon: EPSILON,
      inputShape: table.input, outputs: 2, metadata: exportMetadata({ classNames: ['left', 'top'], preprocessing: p, batchNorm: 'support' }),
    }));
    const results = await predict({ model: file, images: files, provider: 'cpu' });
    const expected = referenceForward(table.layers, weights, images, 2, EPSILON, stats).logits;
    assert.equal(results.length, 2);
    for (let i = 0; i < 2; ++i) {
      const best = expected[2 * i] >= expected[2 * i + 1] ? 0 : 1;
      assert.equal(results[i].className, ['left', 'top'][best]);
      assert.equal(results[i].file, files[i]);
      assert.ok(Math.abs(results[i].probabilities[0] + results[i].probabilities[1] - 1) < 1e-6);
    }
    const text = formatPredictions(results, ['left', 'top']);
    const lines = text.trimEnd().split('\n');
    assert.equal(lines.length, 4);
    assert.match(lines[0], /^file\s+class\s+p\s+left\s+top$/);
    assert.ok(lines[2].startsWith(files[0]));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- (5) the native engine

const here = path.dirname(fileURLToPath(import.meta.url));
const addon = path.resolve(here, '..', '..', 'build', 'Release', 'maml_native.node');

for (const arch of ARCHS) {
  for (const mode of ['support', 'batch'] as BatchNormExport[]) {
    test(`${arch}, batch norm '${mode}': ONNX logits equal the native engine's forward`, async (t) => {
      if (!existsSync(addon)) {
        t.skip(`the native addon is not built (${addon}); run \`npm run build:native\``);
        return;
      }
      const { createEngine } = await import('../src/native/engine.js');
      const ways = 5;
      const engine = createEngine({ arch, ways, dtype: 'float32' });
      const layers = engine.layers();
      const parameters = engine.parameters();
      const reference = referenceTable(arch, ways);
      assert.deepEqual(layers.map((l) => [l.kind, l.in, l.out, l.stride, l.padTop, l.padLeft]),
        reference.layers.map((l) => [l.kind, l.in, l.out, l.stride, l.padTop, l.padLeft]), 'the TS reference table is the engine\'s');
      const weights = engine.initialize(7);
      const n = arch === 'miniimagenet' ? 3 : 5;
      const images = randomImages(n, reference.input, 11);
      const native = engine.forward(weights, { images, size: n, lossWeight: 1 });
      const model = buildOnnxModel({
        layers, parameters, weights, batchNorm: mode, supportStatistics: mode === 'support' ? native.batchNorm : undefined,
        epsilon: EPSILON, inputShape: reference.input, outputs: ways, metadata: {},
      });
      const got = await onnxLogits(model, images, n, reference.input);
      const scale = Math.max(1, maxAbs(native.logits));
      const diff = maxAbsDiff(got, native.logits);
      t.diagnostic(`max |onnx - native| ${diff.toExponential(2)}, max |logit| ${maxAbs(native.logits).toFixed(3)}`);
      assert.ok(diff < 1e-5 * scale, `ONNX and native logits differ by ${diff} (max |logit| ${scale})`);
      // the native statistics are those of the float64 reference
      const ref = referenceForward(layers, weights, images, n, EPSILON);
      assert.ok(maxAbsDiff(ref.logits, native.logits) < 1e-4 * scale);
      if (mode === 'support') {
        // and a support-mode model classifies a new batch as the reference with frozen statistics
        const query = randomImages(2, reference.input, 12);
        const frozen = referenceForward(layers, weights, query, 2, EPSILON, native.batchNorm).logits;
        const q = await onnxLogits(model, query, 2, reference.input);
        assert.ok(maxAbsDiff(q, frozen) < 1e-5 * Math.max(1, maxAbs(frozen)));
      }
    });
  }
}
