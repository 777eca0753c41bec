// Layout detection and prepare on small generated trees (zip, unpacked, nested, corrupt).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { before, test } from 'node:test';
import { loadImageCache } from '../src/data/imageCache.js';
import { findOmniglotLayout } from '../src/data/omniglotLayout.js';
import { decodeOmniglotImage, prepareOmniglot } from '../src/data/omniglotPrepare.js';
import { writeOmniglotTree, zipFolder } from './fixtures/omniglot/fixtureTree.js';

let work: string;
let unpacked: string; // holds images_background/ and images_evaluation/
let written: string[];
let reference: { pixels: Buffer; checksum: string };

function tmp(name: string): string {
  return fs.mkdtempSync(path.join(work, `${name}-`));
}

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'maml-omniglot-'));
  unpacked = path.join(work, 'unpacked');
  written = await writeOmniglotTree(unpacked);
  const out = tmp('ref');
  const result = await prepareOmniglot({ src: unpacked, out });
  reference = { pixels: fs.readFileSync(path.join(result.cacheDir, 'pixels.u8')), checksum: result.index.sourceChecksum };
});

test('unpacked folders: classes, order, polarity and pixels of the decode pipeline', async () => {
  const out = tmp('out');
  const progress: [number, number][] = [];
  const result = await prepareOmniglot({ src: unpacked, out, onProgress: (d, t) => progress.push([d, t]), concurrency: 3 });
  assert.equal(result.alreadyPrepared, false);
  assert.equal(result.cacheDir, path.join(out, 'omniglot'));
  const { index, pixels } = loadImageCache(result.cacheDir);
  assert.equal(index.dataset, 'omniglot');
  assert.deepEqual(index.imageShape, [1, 28, 28]);
  assert.equal(index.invert, true);
  assert.equal(index.count, 28);
  assert.equal(written.length, 28);
  // Background first, then code-point order within: 'Greek' < 'Latin'.
  assert.deepEqual(
    index.classes.map((c) => `${c.source}:${c.name}:${c.group}:${c.first}:${c.count}`),
    [
      'background:Greek/character01:Greek:0:4',
      'background:Greek/character02:Greek:4:4',
      'background:Latin/character01:Latin:8:4',
      'background:Latin/character02:Latin:12:4',
      'background:Latin/character03:Latin:16:4',
      'evaluation:Angelic/character01:Angelic:20:4',
      'evaluation:Angelic/character02:Angelic:24:4',
    ],
  );
  assert.deepEqual(index.files, [...written].sort());
  assert.equal(progress.length, 28);
  assert.deepEqual(progress.at(-1), [28, 28]);
  // Order preserved under concurrency: every cached image equals the pipeline on its file.
  for (let i = 0; i < index.count; i++) {
    const expected = await decodeOmniglotImage(path.join(unpacked, index.files[i]!));
    assert.deepEqual(new Uint8Array(pixels.subarray(i * 784, (i + 1) * 784)), expected, index.files[i]);
  }
  // Original polarity: mostly white paper (255) with some dark stroke pixels.
  const white = pixels.filter((v) => v === 255).length / pixels.length;
  assert.ok(white > 0.6 && white < 0.99, `white fraction ${white}`);
  assert.ok(Math.min(...pixels) < 60, 'strokes are dark');
  assert.deepEqual(pixels, reference.pixels);
});

test('folder of zips gives the same checksum and the same bytes; __MACOSX junk is ignored', async () => {
  const src = tmp('zips');
  zipFolder(unpacked, 'images_background', path.join(src, 'images_background.zip'), [
    ['__MACOSX/images_background/Latin/character01/._0001_01.png', Buffer.from('not a png')],
  ]);
  zipFolder(unpacked, 'images_evaluation', path.join(src, 'images_evaluation.zip'));
  const layout = await findOmniglotLayout(src);
  await layout.close();
  assert.equal(layout.imageCount, 28);
  assert.equal(layout.sourceChecksum, reference.checksum);
  assert.ok(layout.characters[0]!.images[0]!.origin.includes('images_background.zip:'));
  const result = await prepareOmniglot({ src, out: tmp('out') });
  assert.deepEqual(fs.readFileSync(path.join(result.cacheDir, 'pixels.u8')), reference.pixels);

  // Zipped and unpacked side by side: each image once, the unpacked copy preferred.
  fs.cpSync(path.join(unpacked, 'images_background'), path.join(src, 'images_background'), { recursive: true });
  const both = await findOmniglotLayout(src);
  await both.close();
  assert.equal(both.imageCount, 28);
  assert.equal(both.sourceChecksum, reference.checksum);
  assert.ok(both.report.includes('20 images found twice (e.g. both zipped and unpacked); used one copy of each'), both.report.join('\n'));
  const origins = both.characters.flatMap((c) => c.images.map((i) => i.origin));
  assert.equal(origins.filter((o) => o.includes('.zip:')).length, 8);
});

test('a single zip as --src holds only its half', async () => {
  const src = tmp('zip');
  const zip = path.join(src, 'images_evaluation.zip');
  zipFolder(unpacked, 'images_evaluation', zip);
  const layout = await findOmniglotLayout(zip);
  await layout.close();
  assert.equal(layout.imageCount, 8);
  assert.deepEqual([...new Set(layout.characters.map((c) => c.source))], ['evaluation']);
  assert.ok(layout.report.some((l) => l.includes('missing alphabet: images_background/Latin')));
});

test('extra wrapping folders and pointing at one half directly', async () => {
  const src = tmp('nested');
  const deep = path.join(src, 'downloads', 'omniglot-master', 'python');
  fs.mkdirSync(deep, { recursive: true });
  fs.cpSync(path.join(unpacked, 'images_background'), path.join(deep, 'images_background'), { recursive: true });
  fs.cpSync(path.join(unpacked, 'images_evaluation'), path.join(deep, 'evaluation-copy', 'images_evaluation'), { recursive: true });
  const layout = await findOmniglotLayout(src);
  await layout.close();
  assert.equal(layout.sourceChecksum, reference.checksum);

  const half = await findOmniglotLayout(path.join(unpacked, 'images_background'));
  await half.close();
  assert.equal(half.imageCount, 20);
  assert.ok(half.characters.every((c) => c.source === 'background'));
});

test('an unknown top folder is called background', async () => {
  const src = tmp('plain');
  fs.cpSync(path.join(unpacked, 'images_evaluation', 'Angelic'), path.join(src, 'my-letters', 'Angelic'), { recursive: true });
  const layout = await findOmniglotLayout(src);
  await layout.close();
  assert.equal(layout.characters.length, 2);
  assert.deepEqual(layout.characters.map((c) => `${c.source}:${c.name}`), ['background:Angelic/character01', 'background:Angelic/character02']);
  assert.ok(layout.report.some((l) => l.includes('unknown alphabet (not in the Omniglot release): images_background/Angelic')));
});

test('missing alphabets and odd counts are reported, not fatal', async () => {
  const layout = await findOmniglotLayout(unpacked);
  await layout.close();
  const r = layout.report;
  assert.ok(r.includes('missing alphabet: images_background/Korean'), r.join('\n'));
  assert.ok(r.includes('missing alphabet: images_evaluation/Tibetan'));
  assert.ok(!r.some((l) => l === 'missing alphabet: images_background/Latin'));
  assert.ok(r.includes('images_background/Latin: 3 characters, expected 26'));
  assert.ok(r.includes('images_background/Greek/character01: 4 images, expected 20'));
  assert.ok(r.some((l) => l.startsWith('7 characters in all, expected 1623')));
});

test('a corrupt PNG stops prepare, names the file, and leaves no cache', async () => {
  const src = tmp('corrupt');
  fs.cpSync(unpacked, src, { recursive: true });
  const bad = path.join(src, 'images_background', 'Latin', 'character02', 'bad_01.png');
  fs.writeFileSync(bad, Buffer.from('definitely not a png'));
  const truncated = path.join(src, 'images_evaluation', 'Angelic', 'character01', 'zz_99.png');
  const good = fs.readFileSync(path.join(src, written.find((w) => w.startsWith('images_evaluation'))!));
  fs.writeFileSync(truncated, good.subarray(0, 60)); // valid signature and IHDR, no image data

  const out = tmp('out');
  await assert.rejects(prepareOmniglot({ src, out }), (err: Error) => {
    assert.ok(err.message.includes(bad), err.message);
    assert.match(err.message, /not a PNG file/);
    return true;
  });
  const cacheDir = path.join(out, 'omniglot');
  assert.deepEqual(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : [], []);

  fs.rmSync(bad);
  await assert.rejects(prepareOmniglot({ src, out }), (err: Error) => {
    assert.ok(err.message.includes(truncated), err.message);
    assert.match(err.message, /truncated \(60 bytes, no IEND chunk/);
    return true;
  });
  assert.deepEqual(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : [], []);

  // Whole file, PNG framing intact, compressed data garbled: only the decoder can tell.
  const garbled = Buffer.from(good);
  for (let i = 45; i < garbled.length - 20; i++) garbled[i] = (i * 131) & 255;
  fs.writeFileSync(truncated, garbled);
  await assert.rejects(prepareOmniglot({ src, out }), (err: Error) => {
    assert.ok(err.message.includes(truncated), err.message);
    assert.match(err.message, /not a decodable PNG image \(.+\)/);
    return true;
  });
  assert.deepEqual(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : [], []);
});

test('a second run with the same source is a no-op; a changed source rebuilds', async () => {
  const src = tmp('idem');
  fs.cpSync(unpacked, src, { recursive: true });
  const out = tmp('out');
  const first = await prepareOmniglot({ src, out });
  const indexPath = path.join(first.cacheDir, 'index.json');
  const before = fs.statSync(indexPath).mtimeMs;
  await new Promise((r) => setTimeout(r, 20));
  const second = await prepareOmniglot({ src, out });
  assert.equal(second.alreadyPrepared, true);
  assert.equal(second.index.createdAt, first.index.createdAt);
  assert.equal(fs.statSync(indexPath).mtimeMs, before);

  fs.rmSync(path.join(src, 'images_background', 'Greek'), { recursive: true });
  const third = await prepareOmniglot({ src, out });
  assert.equal(third.alreadyPrepared, false);
  assert.equal(third.index.count, 20);
  assert.notEqual(third.index.sourceChecksum, first.index.sourceChecksum);
  assert.ok(third.report.includes('missing alphabet: images_background/Greek'));
});

test('a missing --src says what to pass', async () => {
  await assert.rejects(findOmniglotLayout(path.join(work, 'nope')), /does not exist: pass the folder holding images_background\.zip/);
  const empty = tmp('empty');
  await assert.rejects(findOmniglotLayout(empty), /no Omniglot images found/);
});

test("Lake's runs: a missing answer key or image is named", async () => {
  const { loadLakeRuns } = await import('../src/data/lakeRuns.js');
  const { strokePng } = await import('./fixtures/omniglot/fixtureTree.js');
  const root = tmp('runs');
  const run = path.join(root, 'run01');
  fs.mkdirSync(path.join(run, 'training'), { recursive: true });
  fs.mkdirSync(path.join(run, 'test'), { recursive: true });
  for (let i = 1; i <= 3; i++) {
    fs.writeFileSync(path.join(run, 'training', `class0${i}.png`), await strokePng(i));
    fs.writeFileSync(path.join(run, 'test', `item0${i}.png`), await strokePng(i + 10));
  }
  await assert.rejects(loadLakeRuns(root), /run01[/\\]class_labels\.txt is missing/);
  const labels = ['run01/test/item01.png run01/training/class03.png', 'run01/test/item02.png run01/training/class01.png'];
  fs.writeFileSync(path.join(run, 'class_labels.txt'), labels.join('\n') + '\n');
  await assert.rejects(loadLakeRuns(root), /gives no class for item03\.png/);
  fs.writeFileSync(path.join(run, 'class_labels.txt'), [...labels, 'run01/test/item03.png run01/training/class09.png'].join('\n'));
  await assert.rejects(loadLakeRuns(root), /class_labels\.txt:3: training image run01\/training\/class09\.png is not in/);
  fs.writeFileSync(path.join(run, 'class_labels.txt'), [...labels, 'run01/test/item03.png run01/training/class02.png'].join('\r\n'));
  const [loaded] = await loadLakeRuns(root);
  assert.deepEqual([...loaded!.testLabels], [2, 0, 1]);
  assert.equal(loaded!.training.length, 3 * 784);
  assert.deepEqual(loaded!.test.subarray(784, 1568), await decodeOmniglotImage(path.join(run, 'test', 'item02.png')));
  await assert.rejects(loadLakeRuns(path.join(root, 'run01')), /has no runNN folders/);
});
