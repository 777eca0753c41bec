// Real MiniImagenet images (60 per class, all 100 classes) against the full Ravi csvs:
// /work/shared/data or $MAML_SHARED_DATA. Skips with a message where the data is absent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadImageCache } from '../src/data/imageCache.js';
import { detectMiniImagenetLayout } from '../src/data/miniImagenetLayout.js';
import { prepareMiniImagenet } from '../src/data/miniImagenetPrepare.js';
import { miniImagenetSplit } from '../src/data/miniImagenetSplits.js';

// dist/test/ -> repository root
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const shared = process.env.MAML_SHARED_DATA ?? path.resolve(repo, '../shared/data');
const src = path.join(shared, 'natural', 'miniimagenet-84');
const splits = path.join(shared, 'miniimagenet-splits');
const absent = !fs.existsSync(src) || !fs.existsSync(path.join(splits, 'train.csv'));

test('real MiniImagenet subset (60 per class) with the Ravi csvs', async (t) => {
  if (absent) {
    t.skip(`no real MiniImagenet data at ${src} and ${splits}; set MAML_SHARED_DATA to the folder holding natural/miniimagenet-84 and miniimagenet-splits`);
    return;
  }
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'mi-real-'));
  try {
    const started = Date.now();
    const result = await prepareMiniImagenet({ src, splits, out });
    const seconds = (Date.now() - started) / 1000;
    const report = result.report.join('\n');
    console.log(`# real prepare: ${result.index.count} images in ${seconds.toFixed(1)} s`);
    assert.ok(report.includes('540 of 600 images per class missing in every class: a subset (60 per class); continuing'), report);
    assert.ok(report.includes('layout: split-folders'), report);

    const { pixels, index } = loadImageCache(result.cacheDir);
    assert.equal(index.classes.length, 100);
    assert.equal(index.count, 6000);
    assert.ok(index.classes.every((c) => c.count === 60));
    assert.equal(pixels.length, 6000 * 3 * 84 * 84);
    const split = miniImagenetSplit(index);
    assert.deepEqual([split.train.length, split.val.length, split.test.length], [64, 16, 20]);
    assert.deepEqual([split.counts.trainImages, split.counts.valImages, split.counts.testImages], [3840, 960, 1200]);
    assert.equal(index.classes[0].name, 'n01532829', 'first train class of train.csv');
    assert.equal(index.classes[64].source, 'val.csv');

    // Real photos: mid-range mean, wide spread, and the three channels differ (colour, not grey).
    let sum = 0;
    let sumSquares = 0;
    for (let i = 0; i < pixels.length; i++) {
      const v = pixels[i];
      sum += v;
      sumSquares += v * v;
    }
    const mean = sum / pixels.length;
    const std = Math.sqrt(sumSquares / pixels.length - mean * mean);
    console.log(`# real pixels: mean ${mean.toFixed(1)}, std ${std.toFixed(1)}`);
    assert.ok(mean > 60 && mean < 190, `mean ${mean}`);
    assert.ok(std > 40, `std ${std}`);
    const plane = 84 * 84;
    let channelDifference = 0;
    for (let img = 0; img < 6000; img += 50) {
      const base = img * 3 * plane;
      for (let i = 0; i < plane; i++) channelDifference += Math.abs(pixels[base + i] - pixels[base + 2 * plane + i]);
    }
    assert.ok(channelDifference / (120 * plane) > 5, 'red and blue planes must differ in colour photos');

    const again = await prepareMiniImagenet({ src, splits, out });
    assert.equal(again.alreadyPrepared, true);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test('real MiniImagenet subset with its own csvs: nothing missing', (t) => {
  if (absent) {
    t.skip(`no real MiniImagenet data at ${src}; set MAML_SHARED_DATA`);
    return;
  }
  const layout = detectMiniImagenetLayout(src);
  assert.equal(layout.kind, 'split-folders');
  assert.equal(layout.classes.length, 100);
  assert.ok(layout.classes.every((c) => c.images.length === 60 && c.missing.length === 0));
  assert.equal(layout.extra.length, 0);
});
