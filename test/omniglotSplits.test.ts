import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CacheIndex } from '../src/data/imageCache.js';
import { OMNIGLOT_ALPHABETS } from '../src/data/omniglotLayout.js';
import { fisherYatesShuffle, formatSplitManifest, omniglotSplit } from '../src/data/omniglotSplits.js';

// A cache index shaped like the full Omniglot one (964 + 659 characters of 20 images),
// with classes deliberately stored in an order that is not name order.
function fakeIndex(): CacheIndex {
  const classes: CacheIndex['classes'] = [];
  for (const source of ['evaluation', 'background'] as const) {
    for (const [alphabet, n] of Object.entries(OMNIGLOT_ALPHABETS[source]).reverse()) {
      for (let c = 1; c <= n; c++) {
        classes.push({ name: `${alphabet}/character${String(c).padStart(2, '0')}`, group: alphabet, source, first: 0, count: 20 });
      }
    }
  }
  classes.forEach((c, i) => (c.first = i * 20));
  return {
    format: 'maml-native-image-cache', version: 1, dataset: 'omniglot', imageShape: [1, 28, 28], count: classes.length * 20,
    invert: true, classes, files: [], sourceChecksum: 'x', createdAt: '',
  };
}

const index = fakeIndex();

test('Fisher-Yates is a seeded permutation (pinned for seed 1)', () => {
  const a = fisherYatesShuffle(Array.from({ length: 10 }, (_, i) => i), 1);
  assert.deepEqual([...a].sort((x, y) => x - y), Array.from({ length: 10 }, (_, i) => i));
  assert.deepEqual(a, fisherYatesShuffle(Array.from({ length: 10 }, (_, i) => i), 1));
  assert.notDeepEqual(a, fisherYatesShuffle(Array.from({ length: 10 }, (_, i) => i), 2));
  // Pinned so an accidental change of generator or algorithm shows up as a changed split.
  assert.deepEqual(a, PINNED_SHUFFLE_SEED_1);
});

const PINNED_SHUFFLE_SEED_1 = [7, 5, 3, 2, 4, 8, 9, 1, 0, 6];

test('paper split: 1100 / 100 / 423 disjoint classes covering all 1623', () => {
  assert.equal(index.classes.length, 1623);
  const m = omniglotSplit(index, 'paper');
  assert.equal(m.seed, 1);
  assert.deepEqual([m.train.length, m.val.length, m.test.length], [1100, 100, 423]);
  assert.deepEqual(m.counts, { train: 1100, val: 100, test: 423, trainImages: 22000, valImages: 2000, testImages: 8460 });
  const all = [...m.train, ...m.val, ...m.test];
  assert.equal(new Set(all).size, 1623);
  assert.ok(all.every((i) => Number.isInteger(i) && i >= 0 && i < 1623));
  // Mixed alphabets from both halves in every part (a shuffle, not a cut).
  for (const part of [m.train, m.val, m.test]) {
    assert.ok(new Set(part.map((i) => index.classes[i]!.source)).size === 2);
  }
  assert.match(m.hash, /^[0-9a-f]{64}$/);
});

test('splits depend on names, not on the order classes sit in the cache', () => {
  const a = omniglotSplit(index, 'paper', 1);
  const reversed = { ...index, classes: [...index.classes].reverse() };
  const b = omniglotSplit(reversed, 'paper', 1);
  assert.equal(a.hash, b.hash);
  assert.deepEqual(b.test.map((i) => reversed.classes[i]!.name), a.test.map((i) => index.classes[i]!.name));
  const c = omniglotSplit(index, 'paper', 2);
  assert.notEqual(c.hash, a.hash);
  assert.equal(omniglotSplit(index, 'paper', 1).hash, a.hash);
});

test('background protocol: evaluation is test, a seeded 10% of background is val', () => {
  const m = omniglotSplit(index, 'background', 1);
  assert.deepEqual([m.train.length, m.val.length, m.test.length], [868, 96, 659]);
  assert.ok(m.test.every((i) => index.classes[i]!.source === 'evaluation'));
  assert.ok([...m.train, ...m.val].every((i) => index.classes[i]!.source === 'background'));
  assert.equal(new Set([...m.train, ...m.val]).size, 964);
  const other = omniglotSplit(index, 'background', 7);
  assert.notDeepEqual(other.val, m.val);
  assert.deepEqual(new Set(other.test), new Set(m.test));
});

test('errors and the printable summary', () => {
  const small = { ...index, classes: index.classes.slice(0, 500) };
  assert.throws(() => omniglotSplit(small, 'paper'), /has 500 classes, but the paper split needs more than 1200/);
  assert.throws(() => omniglotSplit(index, 'nope' as 'paper'), /protocol must be 'paper' or 'background'/);
  const m = omniglotSplit(index, 'paper');
  const text = formatSplitManifest(m);
  assert.ok(text.includes(m.hash.slice(0, 16)));
  assert.match(text, /train 1100 classes \(22000 images\)/);
  assert.match(text, /test  423 classes \(8460 images\)/);
});
