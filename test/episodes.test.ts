import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EpisodeSampler, type EpisodeBatch, type EpisodeSamplerOptions } from '../src/data/episodes.js';

// 30 classes of 20 images, laid out contiguously as a cache does (class c owns c*20..c*20+19),
// except class 7 which has 25 images, to catch code that assumes equal counts.
const classes = Array.from({ length: 30 }, (_, c) => ({ first: c < 8 ? c * 20 : c * 20 + 5, count: c === 7 ? 25 : 20 }));
const base: EpisodeSamplerOptions = { classes, ways: 5, shots: 1, queries: 15, rotate: true, seed: 42 };

function classOf(index: number): number {
  const c = classes.findIndex((k) => index >= k.first && index < k.first + k.count);
  assert.ok(c >= 0, `index ${index} belongs to no class`);
  return c;
}

function checkBatch(b: EpisodeBatch, o: EpisodeSamplerOptions): void {
  const { ways, shots, queries } = o;
  assert.equal(b.support.indices.length, b.tasks * ways * shots);
  assert.equal(b.query.indices.length, b.tasks * ways * queries);
  for (let t = 0; t < b.tasks; t++) {
    const taskClasses = new Set<number>();
    const labelsSeen = new Set<number>();
    for (let w = 0; w < ways; w++) {
      const s = b.support.indices.subarray((t * ways + w) * shots, (t * ways + w + 1) * shots);
      const q = b.query.indices.subarray((t * ways + w) * queries, (t * ways + w + 1) * queries);
      const c = classOf(s[0]!);
      assert.ok(!taskClasses.has(c), `task ${t}: class ${c} repeated`);
      taskClasses.add(c);
      const images = [...s, ...q];
      assert.ok(images.every((i) => classOf(i) === c), 'all images of a slot come from one class');
      assert.equal(new Set(images).size, shots + queries, 'support and query disjoint, no image twice');
      const sl = b.support.labels.subarray((t * ways + w) * shots, (t * ways + w + 1) * shots);
      const ql = b.query.labels.subarray((t * ways + w) * queries, (t * ways + w + 1) * queries);
      const label = sl[0]!;
      assert.ok([...sl, ...ql].every((l) => l === label), 'one label per class slot');
      labelsSeen.add(label);
      const sr = b.support.rotations.subarray((t * ways + w) * shots, (t * ways + w + 1) * shots);
      const qr = b.query.rotations.subarray((t * ways + w) * queries, (t * ways + w + 1) * queries);
      const rot = sr[0]!;
      assert.ok([...sr, ...qr].every((r) => r === rot), 'one rotation per class, support and query alike');
      assert.ok(rot >= 0 && rot <= 3);
      if (!o.rotate) assert.equal(rot, 0);
    }
    assert.deepEqual([...labelsSeen].sort((a, b) => a - b), Array.from({ length: ways }, (_, i) => i), 'labels are a permutation of 0..N-1');
  }
}

test('sampled tasks have distinct classes, disjoint support/query, permuted labels, per-class rotation', () => {
  const sampler = new EpisodeSampler(base);
  const b = sampler.sample(200);
  assert.equal(b.tasks, 200);
  checkBatch(b, base);
  // The randomness is really there: all rotations, all classes, and labels not tied to slots.
  assert.deepEqual([...new Set(b.support.rotations)].sort(), [0, 1, 2, 3]);
  assert.equal(new Set([...b.support.indices].map(classOf)).size, 30);
  const firstSlotLabels = new Set(Array.from({ length: 200 }, (_, t) => b.support.labels[t * 5]));
  assert.equal(firstSlotLabels.size, 5);
  // Class 7's extra images (first+20..first+24) are reachable.
  const class7 = [...b.query.indices].filter((i) => classOf(i) === 7);
  assert.ok(class7.some((i) => i >= classes[7]!.first + 20));
});

test('5-shot, no rotation, more support than query', () => {
  const o = { ...base, shots: 5, queries: 2, rotate: false, ways: 20 };
  const b = new EpisodeSampler(o).sample(30);
  checkBatch(b, o);
  assert.ok(b.support.rotations.every((r) => r === 0));
});

test('the same seed gives the same stream; another seed does not', () => {
  const a = new EpisodeSampler(base).sample(10);
  const b = new EpisodeSampler(base).sample(10);
  const c = new EpisodeSampler({ ...base, seed: 43 }).sample(10);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.support.indices, c.support.indices);
});

test('getState/fromState continue exactly, through JSON', () => {
  const straight = new EpisodeSampler(base);
  straight.sample(7);
  const expected = [straight.sample(4), straight.sample(9)];

  const first = new EpisodeSampler(base);
  first.sample(7);
  const saved = JSON.parse(JSON.stringify(first.getState()));
  assert.equal(saved.tasksSampled, 7);
  const resumed = EpisodeSampler.fromState(base, saved);
  assert.deepEqual([resumed.sample(4), resumed.sample(9)], expected);
  // Splitting one call into several gives the same tasks as one big call.
  const whole = new EpisodeSampler(base).sample(6);
  const parts = new EpisodeSampler(base);
  const p1 = parts.sample(2);
  const p2 = parts.sample(4);
  assert.deepEqual([...p1.query.indices, ...p2.query.indices], [...whole.query.indices]);
  assert.throws(() => EpisodeSampler.fromState({ ...base, seed: 1 }, saved), /seed 42/);
});

test('clear errors for too few classes or images', () => {
  assert.throws(() => new EpisodeSampler({ ...base, ways: 31 }), /31-way tasks need at least 31 classes, the split has 30/);
  assert.throws(() => new EpisodeSampler({ ...base, shots: 5, queries: 16 }), /class 0 .* has 20 images, fewer than shots\+queries = 5\+16 = 21/);
  assert.throws(() => new EpisodeSampler({ ...base, ways: 0 }), /ways must be an integer >= 1/);
  assert.throws(() => new EpisodeSampler(base).sample(0), /tasks must be/);
});

test('uniform over classes and images (loose chi-square style bound)', () => {
  const o = { ...base, classes: classes.slice(8), ways: 5, shots: 1, queries: 4, rotate: true };
  const b = new EpisodeSampler(o).sample(2000);
  const perClass = new Array<number>(30).fill(0);
  for (const i of b.support.indices) perClass[classOf(i)]!++;
  const used = perClass.slice(8);
  const mean = (2000 * 5) / 22;
  for (const n of used) assert.ok(Math.abs(n - mean) < 0.2 * mean, `class count ${n} vs mean ${mean}`);
  const rotations = [0, 0, 0, 0];
  for (let i = 0; i < b.support.rotations.length; i++) rotations[b.support.rotations[i]!]!++;
  for (const n of rotations) assert.ok(Math.abs(n - 2500) < 250, `rotation count ${n}`);
  const position = new Array<number>(20).fill(0); // which image within its class
  for (const i of b.query.indices) position[i - classes[classOf(i)]!.first]!++;
  for (const n of position) assert.ok(Math.abs(n - 2000) < 300, `image position count ${n}`);
});
