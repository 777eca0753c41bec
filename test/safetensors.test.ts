import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeSafetensors, encodeSafetensors, readSafetensors, tensor, writeSafetensors } from '../src/io/safetensors.js';

test('decodes bytes laid out by hand as the format describes', () => {
  const header = JSON.stringify({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, __metadata__: { k: 'v' } });
  const bytes = Buffer.alloc(8 + header.length + 8);
  bytes.writeBigUInt64LE(BigInt(header.length), 0);
  bytes.write(header, 8);
  bytes.writeFloatLE(1.5, 8 + header.length);
  bytes.writeFloatLE(-2, 12 + header.length);
  const file = decodeSafetensors(bytes);
  assert.deepEqual(Array.from(file.tensors.w.data as Float32Array), [1.5, -2]);
  assert.deepEqual(file.metadata, { k: 'v' });
});

test('round-trips every dtype and aligns the data section', () => {
  const tensors = {
    a: tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]),
    b: tensor(Float64Array.from([Math.PI]), [1]),
    c: tensor(BigInt64Array.from([5n, -1n]), [2]),
    d: tensor(Uint8Array.from([9]), [1]),
  };
  const bytes = encodeSafetensors(tensors, { note: 'x' });
  assert.equal((8 + Number(bytes.readBigUInt64LE(0))) % 8, 0);
  const back = decodeSafetensors(bytes);
  assert.deepEqual(back.tensors.a.shape, [2, 3]);
  assert.equal((back.tensors.b.data as Float64Array)[0], Math.PI);
  assert.deepEqual(Array.from(back.tensors.c.data as BigInt64Array), [5n, -1n]);
  assert.equal(back.metadata.note, 'x');
});

test('writes atomically and reports a truncated file by name', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'st-'));
  const file = path.join(dir, 'x.safetensors');
  writeSafetensors(file, { a: tensor(Float32Array.from([1]), [1]) });
  const bytes = readFileSync(file);
  assert.equal(readSafetensors(file).tensors.a.data[0], 1);
  assert.throws(() => decodeSafetensors(bytes.subarray(0, bytes.length - 2), file), new RegExp(`${file}.*tensor 'a'`));
});
