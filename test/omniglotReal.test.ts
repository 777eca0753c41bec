// The real Omniglot data (../shared/data or $MAML_SHARED_DATA). The full decode takes about
// two minutes on 2 busy cores, so the suite lists the full set (fast, no decoding) and
// prepares three alphabets linked into a tmp folder; MAML_FULL_OMNIGLOT=1 prepares all of
// it. When a full cache already exists at <repo>/data/omniglot it is checked as well.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isCacheComplete, loadImageCache, type CacheIndex } from '../src/data/imageCache.js';
import { loadLakeRuns } from '../src/data/lakeRuns.js';
import { findOmniglotLayout } from '../src/data/omniglotLayout.js';
import { prepareOmniglot } from '../src/data/omniglotPrepare.js';
import { omniglotSplit } from '../src/data/omniglotSplits.js';

// dist/test/omniglotReal.test.js -> the repository root is two levels up.
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.MAML_SHARED_DATA ?? path.resolve(repo, '../shared/data');
const omniglot = path.join(shared, 'omniglot');
const runsDir = path.join(shared, 'omniglot-runs');
const haveOmniglot = fs.existsSync(path.join(omniglot, 'images_background'));
const SKIP = `real Omniglot not found at ${omniglot} (set MAML_SHARED_DATA to the folder holding omniglot/ and omniglot-runs/)`;
// The release is fixed byte for byte, so its listing checksum is too.
const FULL_CHECKSUM = '39a32e1b4079978496ed5432baa4c0a5fa4f9a1424cb5fb3abf4677724ce3f2b';

function pixelStats(pixels: Uint8Array): { mean: number; white: number; dark: number } {
  let sum = 0;
  let white = 0;
  let dark = 0;
  for (const v of pixels) {
    sum += v;
    if (v === 255) white++;
    if (v < 128) dark++;
  }
  return { mean: sum / pixels.length, white: white / pixels.length, dark: dark / pixels.length };
}

function checkFullIndex(index: CacheIndex, pixels: Buffer): void {
  assert.equal(index.classes.length, 1623);
  assert.equal(index.count, 32460);
  assert.equal(index.classes.filter((c) => c.source === 'background').length, 964);
  assert.ok(index.classes.every((c) => c.count === 20));
  assert.equal(new Set(index.classes.map((c) => c.group)).size, 50);
  assert.equal(index.sourceChecksum, FULL_CHECKSUM);
  // Measured on the full cache: mean 233.5, 75.3% exactly white, 8.3% below 128.
  const s = pixelStats(pixels);
  assert.ok(s.mean > 228 && s.mean < 239, `mean pixel ${s.mean}`);
  assert.ok(s.white > 0.72 && s.white < 0.79, `white fraction ${s.white}`);
  assert.ok(s.dark > 0.06 && s.dark < 0.11, `dark fraction ${s.dark}`);
  const split = omniglotSplit(index, 'paper');
  assert.deepEqual([split.train.length, split.val.length, split.test.length], [1100, 100, 423]);
}

test('the full release is found and counted without decoding', { skip: haveOmniglot ? false : SKIP }, async () => {
  const layout = await findOmniglotLayout(omniglot);
  await layout.close();
  assert.equal(layout.characters.length, 1623);
  assert.equal(layout.imageCount, 32460);
  assert.equal(layout.characters.filter((c) => c.source === 'evaluation').length, 659);
  assert.deepEqual(layout.report, []);
  assert.equal(layout.sourceChecksum, FULL_CHECKSUM);
  assert.equal(layout.characters[0]!.images[0]!.path, 'images_background/Alphabet_of_the_Magi/character01/0709_01.png');
});

test('prepare three real alphabets (linked) and check the pixels', { skip: haveOmniglot ? false : SKIP }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'maml-omniglot-real-'));
  try {
    const src = path.join(work, 'src');
    const picks: [string, string][] = [['images_background', 'Latin'], ['images_background', 'Korean'], ['images_evaluation', 'Angelic']];
    for (const [top, alphabet] of picks) {
      fs.mkdirSync(path.join(src, top), { recursive: true });
      fs.symlinkSync(path.join(omniglot, top, alphabet), path.join(src, top, alphabet), 'dir');
    }
    const started = performance.now();
    const result = await prepareOmniglot({ src, out: path.join(work, 'out') });
    const seconds = (performance.now() - started) / 1000;
    t.diagnostic(`prepared ${result.index.count} images in ${seconds.toFixed(1)} s (${((seconds * 1000) / result.index.count).toFixed(2)} ms/image)`);
    const { index, pixels } = loadImageCache(result.cacheDir);
    assert.equal(index.classes.length, 26 + 40 + 20);
    assert.equal(index.count, 86 * 20);
    assert.deepEqual([...new Set(index.classes.map((c) => c.group))], ['Korean', 'Latin', 'Angelic']);
    assert.ok(result.report.includes('missing alphabet: images_background/Greek'));
    const s = pixelStats(pixels);
    assert.ok(s.mean > 220 && s.mean < 245, `mean pixel ${s.mean}`);
    assert.ok(s.white > 0.65 && s.white < 0.85, `white fraction ${s.white}`);
    // Every image has ink (strokes dark) and paper (255) after the resize.
    for (let i = 0; i < index.count; i++) {
      const img = pixels.subarray(i * 784, (i + 1) * 784);
      assert.ok(Math.min(...img) < 128 && Math.max(...img) === 255, index.files[i]);
    }
    // The same files in the full cache, if one was prepared, hold the same bytes.
    const full = isCacheComplete(path.join(repo, 'data', 'omniglot'));
    if (full?.sourceChecksum === FULL_CHECKSUM) {
      const fullPixels = loadImageCache(path.join(repo, 'data', 'omniglot')).pixels;
      const position = new Map(full.files.map((f, i) => [f, i]));
      for (const i of [0, 17, 500, index.count - 1]) {
        const j = position.get(index.files[i]!)!;
        assert.deepEqual(pixels.subarray(i * 784, (i + 1) * 784), fullPixels.subarray(j * 784, (j + 1) * 784));
      }
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});

const fullCacheDir = path.join(repo, 'data', 'omniglot');
const fullCache = isCacheComplete(fullCacheDir);
test('the prepared full cache (<repo>/data/omniglot) has the known counts and statistics', {
  skip: fullCache ? false : `no prepared cache at ${fullCacheDir} (run prepare omniglot --out data)`,
}, () => {
  const { index, pixels } = loadImageCache(fullCacheDir);
  checkFullIndex(index, pixels);
});

test('full prepare (MAML_FULL_OMNIGLOT=1)', { skip: haveOmniglot && process.env.MAML_FULL_OMNIGLOT === '1' ? false : 'set MAML_FULL_OMNIGLOT=1 to decode all 32460 images (about 2 minutes on 2 cores)' }, async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'maml-omniglot-full-'));
  try {
    const started = performance.now();
    const result = await prepareOmniglot({ src: omniglot, out });
    t.diagnostic(`full prepare ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const { index, pixels } = loadImageCache(result.cacheDir);
    checkFullIndex(index, pixels);
    assert.equal((await prepareOmniglot({ src: omniglot, out })).alreadyPrepared, true);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test("Lake's 20 one-shot runs", { skip: fs.existsSync(runsDir) ? false : `Lake's runs not found at ${runsDir}` }, async () => {
  const runs = await loadLakeRuns(runsDir);
  assert.equal(runs.length, 20);
  assert.deepEqual(runs.map((r) => r.name).slice(0, 2), ['run01', 'run02']);
  let correct = 0;
  for (const run of runs) {
    assert.equal(run.training.length, 20 * 784);
    assert.equal(run.test.length, 20 * 784);
    assert.equal(run.testLabels.length, 20);
    // Each training class is the answer for exactly one test item.
    assert.deepEqual([...run.testLabels].sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i));
    const s = pixelStats(run.test);
    assert.ok(s.mean > 215 && s.mean < 250, `${run.name} mean ${s.mean}`);
    // Nearest neighbour on raw pixels: well above chance (5%) only if images and labels line up.
    for (let i = 0; i < 20; i++) {
      let best = -1;
      let bestDistance = Infinity;
      for (let c = 0; c < 20; c++) {
        let d = 0;
        for (let j = 0; j < 784; j++) d += (run.test[i * 784 + j]! - run.training[c * 784 + j]!) ** 2;
        if (d < bestDistance) [best, bestDistance] = [c, d];
      }
      if (best === run.testLabels[i]) correct++;
    }
  }
  const accuracy = correct / 400;
  assert.ok(accuracy > 0.15 && accuracy < 0.5, `pixel nearest-neighbour accuracy ${accuracy} (21% measured)`);
});
