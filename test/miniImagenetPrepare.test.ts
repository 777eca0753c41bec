// MiniImagenet prepare on fixtures made here with sharp: the three layouts, greyscale and
// CMYK JPEGs, another resolution, a corrupt file, a missing class, csv/folder mismatches,
// idempotent reruns, and a memory bound measured in a child process.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { loadImageCache } from '../src/data/imageCache.js';
import { detectMiniImagenetLayout } from '../src/data/miniImagenetLayout.js';
import { prepareMiniImagenet } from '../src/data/miniImagenetPrepare.js';
import { miniImagenetSplit } from '../src/data/miniImagenetSplits.js';

const IMAGE = 3 * 84 * 84;

const made: string[] = [];
function tmpDir(name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mi-${name}-`));
  made.push(dir);
  return dir;
}
after(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true });
  for (const dir of made) fs.rmSync(`${dir}-child.mjs`, { force: true });
});

/** Deterministic noise image (xorshift), so decodes can be compared exactly. */
function noise(width: number, height: number, seed: number, channels = 3): Buffer {
  const out = Buffer.alloc(width * height * channels);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

async function jpeg(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(noise(width, height, seed), { raw: { width, height, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
}

async function greyJpeg(seed: number): Promise<Buffer> {
  const buf = await sharp(noise(84, 84, seed, 1), { raw: { width: 84, height: 84, channels: 1 } }).toColourspace('b-w').jpeg().toBuffer();
  assert.equal((await sharp(buf).metadata()).channels, 1, 'fixture: greyscale JPEG must have 1 channel');
  return buf;
}

async function cmykJpeg(rgb: { r: number; g: number; b: number }): Promise<Buffer> {
  const buf = await sharp({ create: { width: 60, height: 50, channels: 3, background: rgb } }).toColourspace('cmyk').jpeg().toBuffer();
  const meta = await sharp(buf).metadata();
  assert.equal(meta.channels, 4, 'fixture: CMYK JPEG must have 4 channels');
  assert.equal(meta.space, 'cmyk');
  return buf;
}

/** What prepare must produce for a file: sharp's sRGB 84x84 decode, HWC -> CHW. */
async function expectedChw(file: string): Promise<Buffer> {
  const { data, info } = await sharp(file).removeAlpha().toColourspace('srgb').resize(84, 84, { fit: 'fill', kernel: 'lanczos3' }).raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.channels, 3);
  const out = Buffer.alloc(IMAGE);
  for (let i = 0; i < 84 * 84; i++) for (let c = 0; c < 3; c++) out[c * 84 * 84 + i] = data[i * 3 + c];
  return out;
}

function ravi(wnid: string, n: number): string {
  return `${wnid}${String(n).padStart(8, '0')}.jpg`;
}

function writeCsvs(dir: string, splits: Record<'train' | 'val' | 'test', [string, string][]>): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, rows] of Object.entries(splits)) {
    fs.writeFileSync(path.join(dir, `${name}.csv`), ['filename,label', ...rows.map(([f, l]) => `${f},${l}`)].join('\n') + '\n');
  }
}

function rows(wnid: string, count: number, start = 1): [string, string][] {
  return Array.from({ length: count }, (_, i) => [ravi(wnid, start + i), wnid] as [string, string]);
}

// Train classes deliberately not in sorted order: the cache keeps csv order of first appearance.
const TRAIN_A = 'n02000002';
const TRAIN_B = 'n01000001';
const VAL = 'n03000003';
const TEST = 'n04000004';

async function flatFixture(): Promise<{ src: string; images: string }> {
  const src = tmpDir('flat');
  const images = path.join(src, 'images');
  fs.mkdirSync(images);
  writeCsvs(src, { train: [...rows(TRAIN_A, 3), ...rows(TRAIN_B, 3)], val: rows(VAL, 3), test: rows(TEST, 3) });
  let seed = 1;
  for (const wnid of [TRAIN_A, TRAIN_B, VAL, TEST]) {
    for (let i = 1; i <= 3; i++) fs.writeFileSync(path.join(images, ravi(wnid, i)), await jpeg(84, 84, seed++));
  }
  // Special files: greyscale, CMYK, another resolution.
  fs.writeFileSync(path.join(images, ravi(TRAIN_B, 1)), await greyJpeg(99));
  fs.writeFileSync(path.join(images, ravi(TRAIN_B, 2)), await cmykJpeg({ r: 200, g: 40, b: 30 }));
  fs.writeFileSync(path.join(images, ravi(VAL, 2)), await jpeg(131, 97, 77));
  fs.writeFileSync(path.join(images, 'README.txt'), 'not an image');
  return { src, images };
}

function imageAt(pixels: Buffer, i: number): Buffer {
  return pixels.subarray(i * IMAGE, (i + 1) * IMAGE);
}

test('flat images/ + csvs: order, groups, exact pixels, grey/CMYK/resize, splits, idempotent rerun', async () => {
  const { src, images } = await flatFixture();
  const out = tmpDir('out');
  const progress: [number, number][] = [];
  const result = await prepareMiniImagenet({ src, out, onProgress: (d, t) => progress.push([d, t]) });
  assert.equal(result.alreadyPrepared, false);
  assert.equal(result.cacheDir, path.join(out, 'miniimagenet'));
  const { pixels, index } = loadImageCache(result.cacheDir);
  assert.equal(index.count, 12);
  assert.deepEqual(index.imageShape, [3, 84, 84]);
  assert.equal(index.invert, false);
  assert.equal(pixels.length, 12 * IMAGE);
  assert.deepEqual(
    index.classes.map((c) => [c.name, c.group, c.source, c.first, c.count]),
    [
      [TRAIN_A, 'train', 'train.csv', 0, 3],
      [TRAIN_B, 'train', 'train.csv', 3, 3],
      [VAL, 'val', 'val.csv', 6, 3],
      [TEST, 'test', 'test.csv', 9, 3],
    ],
  );
  assert.equal(index.files[0], `images/${ravi(TRAIN_A, 1)}`);
  assert.deepEqual(progress.at(-1), [12, 12]);
  assert.equal(progress.length, 12);
  assert.ok(result.report.some((l) => l.startsWith('layout: flat')), result.report.join('\n'));
  assert.ok(result.report.some((l) => l.includes('Ravi & Larochelle split has 64 train classes')), result.report.join('\n'));
  assert.ok(result.report.some((l) => l.includes('not images are ignored') && l.includes('README.txt')), result.report.join('\n'));

  // Plain 84x84 images: exactly sharp's decode, transposed to CHW.
  assert.ok(imageAt(pixels, 0).equals(await expectedChw(path.join(images, ravi(TRAIN_A, 1)))));
  assert.ok(imageAt(pixels, 10).equals(await expectedChw(path.join(images, ravi(TEST, 2)))));
  // Greyscale: three equal planes, not all flat.
  const grey = imageAt(pixels, 3);
  const plane = 84 * 84;
  assert.ok(grey.subarray(0, plane).equals(grey.subarray(plane, 2 * plane)));
  assert.ok(grey.subarray(0, plane).equals(grey.subarray(2 * plane)));
  assert.ok(new Set(grey.subarray(0, plane)).size > 50);
  // CMYK: three channels whose means are near the colour it was made from.
  const cmyk = imageAt(pixels, 4);
  const mean = [0, 1, 2].map((c) => cmyk.subarray(c * plane, (c + 1) * plane).reduce((a, b) => a + b, 0) / plane);
  assert.ok(Math.abs(mean[0] - 200) < 45 && Math.abs(mean[1] - 40) < 45 && Math.abs(mean[2] - 30) < 45, `CMYK means ${mean}`);
  assert.ok(mean[0] > mean[1] + 80, `CMYK red must stay red: ${mean}`);
  // 131x97 resized to 84x84 by lanczos3 'fill'.
  assert.ok(imageAt(pixels, 7).equals(await expectedChw(path.join(images, ravi(VAL, 2)))));

  const split = miniImagenetSplit(index);
  assert.deepEqual([split.train, split.val, split.test], [[0, 1], [2], [3]]);
  assert.deepEqual(split.counts, { train: 2, val: 1, test: 1, trainImages: 6, valImages: 3, testImages: 3 });
  assert.equal(split.protocol, 'ravi-larochelle-2017');
  assert.match(split.hash, /^[0-9a-f]{64}$/);
  const renamed = { ...index, classes: index.classes.map((c, i) => (i === 3 ? { ...c, name: 'n09999999' } : c)) };
  assert.notEqual(miniImagenetSplit(renamed).hash, split.hash);
  assert.throws(() => miniImagenetSplit({ ...index, classes: index.classes.map((c) => ({ ...c, group: 'background' })) }), /group "background"/);

  // Rerun: nothing rewritten.
  const pixelsFile = path.join(result.cacheDir, 'pixels.u8');
  const before = fs.statSync(pixelsFile).mtimeMs;
  const again = await prepareMiniImagenet({ src, out });
  assert.equal(again.alreadyPrepared, true);
  assert.equal(again.index.createdAt, index.createdAt);
  assert.equal(fs.statSync(pixelsFile).mtimeMs, before);
  // A changed source (one file replaced by one of another size) is prepared again.
  fs.writeFileSync(path.join(images, ravi(TEST, 3)), await jpeg(120, 120, 1234));
  const changed = await prepareMiniImagenet({ src, out });
  assert.equal(changed.alreadyPrepared, false);
  assert.notEqual(changed.index.sourceChecksum, index.sourceChecksum);
  assert.ok(loadImageCache(result.cacheDir).pixels.subarray(11 * IMAGE).equals(await expectedChw(path.join(images, ravi(TEST, 3)))));
});

test('class folders WNID/ with --splits: extra classes and files, csv/folder mismatch, ILSVRC names', async () => {
  const src = tmpDir('classes');
  const splits = tmpDir('splits');
  writeCsvs(splits, { train: [...rows(TRAIN_A, 2), ...rows(TRAIN_B, 3)], val: rows(VAL, 2), test: rows(TEST, 2) });
  let seed = 500;
  const put = async (wnid: string, name: string, w = 84, h = 84): Promise<void> => {
    fs.mkdirSync(path.join(src, wnid), { recursive: true });
    fs.writeFileSync(path.join(src, wnid, name), await jpeg(w, h, seed++));
  };
  await put(TRAIN_A, ravi(TRAIN_A, 1), 300, 200);
  await put(TRAIN_A, ravi(TRAIN_A, 2));
  await put(TRAIN_A, ravi(TRAIN_A, 77)); // extra file
  // TRAIN_B holds the original ILSVRC names: csv #n is the n-th in numeric order (1, 2, 10).
  await put(TRAIN_B, `${TRAIN_B}_10.JPEG`, 500, 375);
  await put(TRAIN_B, `${TRAIN_B}_2.JPEG`, 400, 300);
  await put(TRAIN_B, `${TRAIN_B}_1.JPEG`, 90, 90);
  await put(VAL, ravi(VAL, 1));
  await put(TEST, ravi(VAL, 2)); // csv says VAL, folder says TEST
  await put(TEST, ravi(TEST, 1));
  await put(TEST, ravi(TEST, 2));
  await put('n05555555', ravi('n05555555', 1)); // a class in no csv
  const out = tmpDir('out');
  const result = await prepareMiniImagenet({ src, splits, out });
  const { pixels, index } = loadImageCache(result.cacheDir);
  const report = result.report.join('\n');
  assert.ok(report.includes('layout: class-folders'), report);
  assert.deepEqual(index.classes.map((c) => [c.name, c.count]), [[TRAIN_A, 2], [TRAIN_B, 3], [VAL, 2], [TEST, 2]]);
  assert.deepEqual(index.files.slice(2, 5), [`${TRAIN_B}/${TRAIN_B}_1.JPEG`, `${TRAIN_B}/${TRAIN_B}_2.JPEG`, `${TRAIN_B}/${TRAIN_B}_10.JPEG`]);
  assert.ok(report.includes('3 images matched by ILSVRC number'), report);
  assert.equal(index.files[6], `${TEST}/${ravi(VAL, 2)}`, 'the mismatched file is used under its csv label');
  assert.match(report, /csv\/folder mismatch: 1 files lie in another class's folder.*n04000004\/n0300000300000002\.jpg \(in val\.csv as n03000003\)/);
  assert.match(report, /2 image files are in no csv and are ignored: n02000002\/n0200000200000077\.jpg, n05555555\/n0555555500000001\.jpg; 1 class folders not in any csv: n05555555/);
  assert.ok(imageAt(pixels, 0).equals(await expectedChw(path.join(src, TRAIN_A, ravi(TRAIN_A, 1)))));
  assert.ok(imageAt(pixels, 4).equals(await expectedChw(path.join(src, TRAIN_B, `${TRAIN_B}_10.JPEG`))));
});

test('split folders {train,val,test}/WNID/: a subset is reported, a partial class and a split mismatch too', async () => {
  const src = tmpDir('split');
  const splits = tmpDir('splits');
  writeCsvs(splits, { train: [...rows(TRAIN_A, 4), ...rows(TRAIN_B, 4)], val: rows(VAL, 4), test: rows(TEST, 4) });
  let seed = 900;
  for (const [split, wnid] of [['train', TRAIN_A], ['train', TRAIN_B], ['val', VAL], ['test', TEST]]) {
    fs.mkdirSync(path.join(src, split, wnid), { recursive: true });
    for (let i = 1; i <= 2; i++) fs.writeFileSync(path.join(src, split, wnid, ravi(wnid, i)), await jpeg(84, 84, seed++));
  }
  const layout = detectMiniImagenetLayout(src, splits);
  assert.equal(layout.kind, 'split-folders');
  assert.ok(layout.report.includes('2 of 4 images per class missing in every class: a subset (2 per class); continuing'), layout.report.join('\n'));
  assert.deepEqual(layout.classes[0].missing, [ravi(TRAIN_A, 3), ravi(TRAIN_A, 4)]);

  // Own csvs inside SRC listing exactly what is there: nothing missing.
  writeCsvs(src, { train: [...rows(TRAIN_A, 2), ...rows(TRAIN_B, 2)], val: rows(VAL, 2), test: rows(TEST, 2) });
  const own = detectMiniImagenetLayout(src);
  assert.ok(own.classes.every((c) => c.missing.length === 0 && c.images.length === 2));
  assert.ok(!own.report.some((l) => l.includes('missing')), own.report.join('\n'));

  // One class partial, and the test class moved to val/ on disk.
  fs.rmSync(path.join(src, 'train', TRAIN_B, ravi(TRAIN_B, 2)));
  fs.renameSync(path.join(src, 'test', TEST), path.join(src, 'val', TEST));
  const out = tmpDir('out');
  const result = await prepareMiniImagenet({ src, splits, out });
  const report = result.report.join('\n');
  assert.ok(report.includes('4 of 4 classes are partial'), report);
  assert.ok(report.includes(`${TRAIN_B} (train.csv): 1 of 4 found, missing ${ravi(TRAIN_B, 2)}, ${ravi(TRAIN_B, 3)}, ${ravi(TRAIN_B, 4)}`), report);
  assert.ok(report.includes(`1 classes lie in another split folder than their csv; the csv split is used: ${TEST} (folder val/, test.csv)`), report);
  assert.deepEqual(result.index.classes.map((c) => [c.name, c.group, c.count]), [[TRAIN_A, 'train', 2], [TRAIN_B, 'train', 1], [VAL, 'val', 2], [TEST, 'test', 2]]);
});

test('a csv class with no images stops with the class and the csv; nothing is written', async () => {
  const { src, images } = await flatFixture();
  for (let i = 1; i <= 3; i++) fs.rmSync(path.join(images, ravi(VAL, i)));
  const out = tmpDir('out');
  await assert.rejects(prepareMiniImagenet({ src, out }), (err: Error) => {
    assert.match(err.message, /class n03000003 of val\.csv .*has none of its 3 images/);
    return true;
  });
  assert.equal(fs.existsSync(path.join(out, 'miniimagenet', 'index.json')), false);
});

test('a corrupt file stops with its path; with skipBad it is skipped and listed', async () => {
  const { src, images } = await flatFixture();
  const bad = path.join(images, ravi(TRAIN_A, 2));
  fs.writeFileSync(bad, Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.from('definitely not the rest of a jpeg')]));
  const truncated = path.join(images, ravi(TEST, 1));
  fs.writeFileSync(truncated, (await jpeg(84, 84, 4242)).subarray(0, 600));
  const out = tmpDir('out');
  await assert.rejects(prepareMiniImagenet({ src, out }), (err: Error) => {
    assert.ok(err.message.includes(`cannot decode ${bad}`), err.message);
    assert.ok(err.message.includes('--skip-bad'), err.message);
    return true;
  });
  const cacheDir = path.join(out, 'miniimagenet');
  assert.deepEqual(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : [], [], 'no temporaries and no index left behind');

  const result = await prepareMiniImagenet({ src, out, skipBad: true });
  assert.equal(result.index.count, 10);
  assert.deepEqual(result.index.classes.map((c) => c.count), [2, 3, 3, 2]);
  assert.ok(!result.index.files.includes(`images/${ravi(TRAIN_A, 2)}`));
  const report = result.report.join('\n');
  assert.ok(report.includes('skipped 2 files that could not be decoded'), report);
  assert.ok(report.includes(`images/${ravi(TRAIN_A, 2)}: `) && report.includes(`images/${ravi(TEST, 1)}: `), report);
  assert.ok(result.index.notes?.some((n) => n.startsWith(`skipped images/${ravi(TEST, 1)}`)));
});

test('memory: peak RSS stays flat while a 101 MiB cache streams through (child process)', async () => {
  const src = tmpDir('mem');
  const splits = tmpDir('memsplits');
  const classes = Array.from({ length: 100 }, (_, i) => `n1${String(i).padStart(7, '0')}`);
  const perClass = 50;
  // 200 distinct small JPEGs, upscaled to 84x84 by prepare: the cache is far larger than the sources.
  const sources = await Promise.all(Array.from({ length: 200 }, (_, i) => jpeg(12, 12, 7000 + i)));
  let k = 0;
  for (const wnid of classes) {
    fs.mkdirSync(path.join(src, wnid));
    for (let i = 1; i <= perClass; i++) fs.writeFileSync(path.join(src, wnid, ravi(wnid, i)), sources[k++ % sources.length]);
  }
  writeCsvs(splits, {
    train: classes.slice(0, 64).flatMap((w) => rows(w, perClass)),
    val: classes.slice(64, 80).flatMap((w) => rows(w, perClass)),
    test: classes.slice(80).flatMap((w) => rows(w, perClass)),
  });
  const total = classes.length * perClass;
  const cacheMB = (total * IMAGE) / 2 ** 20;
  const out = tmpDir('memout');
  const moduleUrl = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/data/miniImagenetPrepare.js')).href;
  const child = path.join(src, '..', `${path.basename(src)}-child.mjs`);
  fs.writeFileSync(
    child,
    `const { prepareMiniImagenet } = await import(${JSON.stringify(moduleUrl)});
const rss = () => process.resourceUsage().maxRSS / 1024;
const start = rss();
let atTenth = 0;
const r = await prepareMiniImagenet({ src: ${JSON.stringify(src)}, splits: ${JSON.stringify(splits)}, out: ${JSON.stringify(out)},
  onProgress: (done, total) => { if (done === Math.ceil(total / 10)) atTenth = rss(); } });
console.log(JSON.stringify({ count: r.index.count, start, atTenth, end: rss() }));
`,
  );
  const t0 = Date.now();
  const stdout = execFileSync(process.execPath, [child], { encoding: 'utf8' });
  const m = JSON.parse(stdout.trim().split('\n').at(-1)!) as { count: number; start: number; atTenth: number; end: number };
  const seconds = (Date.now() - t0) / 1000;
  console.log(`# memory: ${total} images, cache ${cacheMB.toFixed(0)} MiB, peak RSS ${m.start.toFixed(0)} MiB at start, ${m.atTenth.toFixed(0)} MiB after 10%, ${m.end.toFixed(0)} MiB at end, ${seconds.toFixed(1)} s`);
  assert.equal(m.count, total);
  assert.equal(fs.statSync(path.join(out, 'miniimagenet', 'pixels.u8')).size, total * IMAGE);
  // Holding the images would add 90% of the cache (91 MiB) between 10% and the end; checked:
  // a prepare that keeps every decoded image grows 99 MiB there and fails this bound.
  const growth = m.end - m.atTenth;
  const bound = 30;
  assert.ok(cacheMB * 0.9 > 3 * bound, 'the set must be big enough to show streaming');
  assert.ok(growth < bound, `peak RSS grew ${growth.toFixed(0)} MB over the last 90% of a ${cacheMB.toFixed(0)} MB cache: not streaming`);
  assert.ok(m.end - m.start < 150, `peak RSS ${m.end.toFixed(0)} MB is ${(m.end - m.start).toFixed(0)} MB above the start`);
});
