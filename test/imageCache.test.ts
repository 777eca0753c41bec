import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { ImageCacheWriter, isCacheComplete, loadImageCache, openImageCache } from '../src/data/imageCache.js';

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'maml-cache-'));
}

function image(shape: [number, number, number], value: number): Uint8Array {
  const a = new Uint8Array(shape[0] * shape[1] * shape[2]);
  for (let i = 0; i < a.length; i++) a[i] = (value * 7 + i) & 255;
  return a;
}

const SHAPE: [number, number, number] = [3, 4, 5];

async function writeCache(dir: string, classes: number[]): Promise<Uint8Array[]> {
  const writer = new ImageCacheWriter(dir, { dataset: 'toy', imageShape: SHAPE, invert: false });
  const images: Uint8Array[] = [];
  let n = 0;
  for (const [c, count] of classes.entries()) {
    writer.beginClass(`class${c}`, `group${c % 2}`, c < 2 ? 'background' : 'evaluation');
    for (let i = 0; i < count; i++) {
      const px = image(SHAPE, n++);
      images.push(px);
      await writer.append(px, `src/class${c}/${i}.png`);
    }
  }
  await writer.finish({ sourceChecksum: 'abc', notes: ['hello'] });
  return images;
}

test('a finished cache round-trips pixels and index', async () => {
  const dir = path.join(tmpDir(), 'toy');
  const images = await writeCache(dir, [2, 3, 1]);
  const { pixels, index } = loadImageCache(dir);
  assert.equal(index.format, 'maml-native-image-cache');
  assert.equal(index.version, 1);
  assert.equal(index.dataset, 'toy');
  assert.deepEqual(index.imageShape, SHAPE);
  assert.equal(index.count, 6);
  assert.equal(index.sourceChecksum, 'abc');
  assert.deepEqual(index.notes, ['hello']);
  assert.deepEqual(
    index.classes.map((c) => [c.name, c.group, c.source, c.first, c.count]),
    [
      ['class0', 'group0', 'background', 0, 2],
      ['class1', 'group1', 'background', 2, 3],
      ['class2', 'group0', 'evaluation', 5, 1],
    ],
  );
  assert.equal(index.files[3], 'src/class1/1.png');
  assert.equal(pixels.length, 6 * 60);
  for (const [i, px] of images.entries()) assert.deepEqual(new Uint8Array(pixels.subarray(i * 60, (i + 1) * 60)), px);
  assert.equal(isCacheComplete(dir)?.count, 6);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['index.json', 'pixels.u8']);
});

test('abort mid-way leaves no index and no temporaries; loading says to re-run prepare', async () => {
  const dir = path.join(tmpDir(), 'toy');
  const writer = new ImageCacheWriter(dir, { dataset: 'toy', imageShape: SHAPE, invert: false });
  writer.beginClass('a', 'g', 's');
  for (let i = 0; i < 10; i++) await writer.append(image(SHAPE, i), `f${i}`);
  assert.ok(fs.readdirSync(dir).some((f) => f.startsWith('pixels.u8.tmp-')), 'pixels stream to a temporary file');
  await writer.abort();
  assert.deepEqual(fs.readdirSync(dir), []);
  assert.equal(isCacheComplete(dir), undefined);
  assert.throws(() => loadImageCache(dir), (err: Error) => {
    assert.match(err.message, /index\.json is missing/);
    assert.match(err.message, /prepare/);
    assert.ok(err.message.includes(dir));
    return true;
  });
  await assert.rejects(writer.append(image(SHAPE, 0), 'x'), /already aborted/);
});

test('a crash before the final rename (pixels but no index) is not a cache', async () => {
  const dir = path.join(tmpDir(), 'toy');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'pixels.u8'), Buffer.alloc(120));
  assert.equal(isCacheComplete(dir), undefined);
  assert.throws(() => loadImageCache(dir), /index\.json is missing/);
});

test('a truncated pixel file is detected with the sizes and the fix', async () => {
  const dir = path.join(tmpDir(), 'toy');
  await writeCache(dir, [2, 2]);
  fs.truncateSync(path.join(dir, 'pixels.u8'), 100);
  assert.equal(isCacheComplete(dir), undefined);
  assert.throws(() => loadImageCache(dir), (err: Error) => {
    assert.match(err.message, /pixels\.u8 has 100 bytes, expected 240/);
    assert.match(err.message, /re-run prepare/);
    return true;
  });
});

test('append checks the image size and needs a class first', async () => {
  const dir = path.join(tmpDir(), 'toy');
  const writer = new ImageCacheWriter(dir, { dataset: 'toy', imageShape: SHAPE, invert: false });
  await assert.rejects(writer.append(image(SHAPE, 0), 'first.png'), /beginClass/);
  writer.beginClass('a', 'g', 's');
  await assert.rejects(writer.append(new Uint8Array(59), 'short.png'), /short\.png.*59 bytes, expected 60/);
  await writer.abort();
  assert.throws(() => new ImageCacheWriter(dir, { dataset: 'x', imageShape: [1, 0, 2], invert: false }), /imageShape/);
});

test('a new cache replaces an old one; an aborted rewrite keeps the old one', async () => {
  const dir = path.join(tmpDir(), 'toy');
  await writeCache(dir, [1]);
  await writeCache(dir, [2, 2]);
  assert.equal(loadImageCache(dir).index.count, 4);
  const writer = new ImageCacheWriter(dir, { dataset: 'toy', imageShape: SHAPE, invert: false });
  writer.beginClass('a', 'g', 's');
  await writer.append(image(SHAPE, 99), 'x');
  await writer.abort();
  assert.equal(loadImageCache(dir).index.count, 4);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['index.json', 'pixels.u8']);
});

test('a cache above the in-memory limit stays on disk: only checked, not read', async () => {
  const dir = path.join(tmpDir(), 'toy');
  await writeCache(dir, [2, 3, 1]);
  const small = openImageCache(dir, 360);
  assert.equal(small.pixels?.length, 360);
  const large = openImageCache(dir, 359);
  assert.equal(large.pixels, undefined);
  assert.equal(large.pixelsFile, path.join(dir, 'pixels.u8'));
  assert.equal(large.index.count, 6);
  // the size check still runs without reading the file
  fs.truncateSync(path.join(dir, 'pixels.u8'), 300);
  assert.throws(() => openImageCache(dir, 0), /pixels\.u8 has 300 bytes, expected 360.*re-run prepare/);
});
