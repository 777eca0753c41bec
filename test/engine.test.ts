// The addon from JavaScript: async calls, exact gradients through the binding, the image
// cache path against explicit images, and errors that say what was wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createEngine, type MetaBatch } from '../src/native/engine.js';

const small = { arch: 'omniglot' as const, ways: 3, imageSize: 8, filters: 4, dtype: 'float64' as const };

function randomBatch(tasks: number, size: number, pixels: number, ways: number, seed: number) {
  let s = seed;
  const next = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  const set = () => ({
    images: Float64Array.from({ length: tasks * size * pixels }, next),
    labels: Int32Array.from({ length: tasks * size }, (_, i) => i % ways),
    size,
    lossWeight: 1 / size,
  });
  return { tasks, support: set(), query: set() } satisfies MetaBatch;
}

test('second-order meta-gradient through the binding matches a finite difference of the meta-loss', async () => {
  const engine = createEngine(small);
  const theta = engine.initialize(3) as Float64Array;
  const batch = randomBatch(2, 6, 64, 3, 7);
  const loop = { steps: 2, stepSizes: 0.1, order: 2 as const };
  const { gradient } = await engine.metaGradient(theta, batch, loop);
  const direction = Float64Array.from(theta, (_, i) => Math.sin(i * 12.9898) * 0.5);
  const metaLoss = async (e: number) => {
    const moved = Float64Array.from(theta, (v, i) => v + e * direction[i]);
    const r = await engine.metaGradient(moved, batch, { ...loop, order: 1 });
    return (r.queryLossAfter[0] + r.queryLossAfter[1]) / 2;
  };
  const eps = 1e-6;
  const fd = ((await metaLoss(eps)) - (await metaLoss(-eps))) / (2 * eps);
  let exact = 0;
  gradient.forEach((g: number, i: number) => { exact += g * direction[i]; });
  assert.ok(Math.abs(exact - fd) <= 1e-6 * Math.max(1, Math.abs(fd)), `exact ${exact} vs finite difference ${fd}`);
});

test('the event loop keeps running during a native call', async () => {
  const engine = createEngine({ arch: 'omniglot', ways: 5 });
  const theta = engine.initialize(1);
  const batch = randomBatch(16, 5, 784, 5, 1);
  const f32 = { ...batch, support: { ...batch.support, images: Float32Array.from(batch.support.images) }, query: { ...batch.query, images: Float32Array.from(batch.query.images) } };
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = Date.now();
  await engine.metaGradient(theta, f32, { steps: 5, stepSizes: 0.4 });
  clearInterval(timer);
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 20 || ticks >= 2, `only ${ticks} timer ticks during a ${elapsed} ms call`);
});

test('indices into the image cache give the same gradient as the same images passed explicitly', async () => {
  const engine = createEngine({ ...small, dtype: 'float64' });
  const count = 10;
  const pixels = Uint8Array.from({ length: count * 64 }, (_, i) => (i * 37) % 256);
  engine.setImageCache(pixels, count, 1, 8, 8, true);
  const indices = Int32Array.from([3, 7, 1, 0, 9, 2]);
  const rotations = Uint8Array.from([0, 1, 2, 3, 1, 0]);
  // rotate by hand: k quarter turns counter-clockwise, then invert
  const explicit = new Float64Array(6 * 64);
  indices.forEach((index, e) => {
    for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) {
      let sy = y, sx = x;
      for (let r = 0; r < rotations[e]; r++) [sy, sx] = [sx, 7 - sy];
      explicit[e * 64 + y * 8 + x] = 1 - pixels[index * 64 + sy * 8 + sx] / 255;
    }
  });
  const labels = Int32Array.from([0, 1, 2, 0, 1, 2]);
  const theta = engine.initialize(2);
  const loop = { steps: 1, stepSizes: 0.4 };
  const a = await engine.metaGradient(theta, { tasks: 1, support: { indices, rotations, labels, size: 6, lossWeight: 0.5 }, query: { indices, rotations, labels, size: 6, lossWeight: 0.5 } }, loop);
  const b = await engine.metaGradient(theta, { tasks: 1, support: { images: explicit, labels, size: 6, lossWeight: 0.5 }, query: { images: explicit, labels, size: 6, lossWeight: 0.5 } }, loop);
  assert.deepEqual(Array.from(a.gradient), Array.from(b.gradient));
  // rot90 of a known image: the top-right pixel moves to the top-left
  assert.equal(explicit[64 * 1 + 0], 1 - pixels[7 * 64 + 7] / 255);
});

test('a cache read from its file gives the same gradient as the cache in memory; a wrong-sized file is named', async () => {
  const count = 10;
  const pixels = Uint8Array.from({ length: count * 64 }, (_, i) => (i * 53) % 256);
  const dir = mkdtempSync(path.join(tmpdir(), 'pixel-file-'));
  const file = path.join(dir, 'pixels.u8');
  writeFileSync(file, pixels);
  const inMemory = createEngine(small), onDisk = createEngine(small);
  inMemory.setImageCache(pixels, count, 1, 8, 8, true);
  onDisk.setImageCacheFile(file, count, 1, 8, 8, true);
  const set = { indices: Int32Array.from([9, 2, 5, 0, 3, 7]), rotations: Uint8Array.from([1, 0, 3, 2, 0, 1]), labels: Int32Array.from([0, 1, 2, 0, 1, 2]), size: 3, lossWeight: 1 / 3 };
  const batch = { tasks: 2, support: set, query: set };
  const theta = inMemory.initialize(4);
  const a = await inMemory.metaGradient(theta, batch, { steps: 2, stepSizes: 0.3 });
  const b = await onDisk.metaGradient(theta, batch, { steps: 2, stepSizes: 0.3 });
  assert.deepEqual(Array.from(b.gradient), Array.from(a.gradient));
  assert.throws(() => onDisk.setImageCacheFile(file, count + 1, 1, 8, 8, true), /pixels\.u8 has 640 bytes, expected 704.*re-run prepare/);
  assert.throws(() => onDisk.setImageCacheFile(path.join(dir, 'missing.u8'), count, 1, 8, 8, true), /missing\.u8: cannot open the pixel file/);
});

test('bad input is rejected with what was expected and what came', async () => {
  const engine = createEngine(small);
  const theta = engine.initialize(1);
  const batch = randomBatch(1, 3, 64, 3, 2);
  await assert.rejects(engine.metaGradient(theta.slice(1), batch, { steps: 1, stepSizes: 0.1 }), /parameters.*expected \d+ values, got \d+/);
  await assert.rejects(engine.metaGradient(theta, { ...batch, support: { ...batch.support, labels: Int32Array.from([0, 1, 7]) } }, { steps: 1, stepSizes: 0.1 }), /label 7 .* outside 0\.\.2/);
  await assert.rejects(engine.metaGradient(theta, batch, { steps: 1, stepSizes: 0.1, order: 3 as 1 }), /order: expected 1 or 2, got 3/);
  await assert.rejects(engine.metaGradient(theta, { ...batch, query: { ...batch.query, images: new Float64Array(5) } }, { steps: 1, stepSizes: 0.1 }), /batch\.query\.images.*expected 192 values, got 5/);
  assert.throws(() => createEngine({ arch: 'resnet' as 'mlp', ways: 5 }), /unknown architecture 'resnet'/);
  assert.throws(() => createEngine({ ...small, padding: 'valid' as 'tf' }), /padding.*'tf' or 'symmetric'.*valid/);
});

test('the parameter table has the PyTorch names and shapes', () => {
  const engine = createEngine({ arch: 'miniimagenet', ways: 5 });
  const table = engine.parameters();
  const byName = Object.fromEntries(table.map((p) => [p.name, p]));
  assert.deepEqual(byName['conv1.weight'].shape, [32, 3, 3, 3]);
  assert.deepEqual(byName['head.weight'].shape, [5, 800]);
  assert.equal(byName['bn3.bias'].adapted, false);
  assert.equal(byName['conv4.bias'].adapted, true);
  assert.equal(engine.parameterCount, table.reduce((n, p) => n + p.size, 0));
  assert.deepEqual(engine.layers().at(-1)!.in, [32, 5, 5]);
});
