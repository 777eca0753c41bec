// `maml-native gradient` end to end: files in, the meta-gradient out with the table's names.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEngine } from '../src/native/engine.js';
import { readSafetensors, tensor, writeSafetensors } from '../src/io/safetensors.js';
import { unflattenParameters } from '../src/model/parameters.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

test('gradient command reads params and tasks and writes the same meta-gradient as the API', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'grad-'));
  const engine = createEngine({ arch: 'omniglot', ways: 5, dtype: 'float64' });
  const theta = engine.initialize(11);
  const params = Object.fromEntries(Object.entries(unflattenParameters(engine.parameters(), theta)).map(([k, v]) => [k, tensor(Float32Array.from(v.data), v.shape)]));
  writeSafetensors(path.join(dir, 'p.safetensors'), params);
  const images = (n: number, s: number) => Float32Array.from({ length: n * 784 }, (_, i) => Math.abs(Math.sin(i * s)));
  writeSafetensors(path.join(dir, 't.safetensors'), {
    'support.images': tensor(images(5, 1.3), [5, 1, 28, 28]),
    'support.labels': tensor(BigInt64Array.from([0n, 1n, 2n, 3n, 4n]), [5]),
    'query.images': tensor(images(5, 2.1), [5, 1, 28, 28]),
    'query.labels': tensor(BigInt64Array.from([4n, 3n, 2n, 1n, 0n]), [5]),
  });
  const out = path.join(dir, 'g.safetensors');
  const printed = execFileSync(process.execPath, [cli, 'gradient', '--arch', 'omniglot', '--ways', '5', '--params', path.join(dir, 'p.safetensors'),
    '--task', path.join(dir, 't.safetensors'), '--order', '2', '--steps', '1', '--inner-lr', '0.4', '--double', '--out', out], { encoding: 'utf8' });
  assert.match(printed, /wrote .*g\.safetensors/);
  const written = readSafetensors(out);
  assert.deepEqual(written.tensors['conv1.weight'].shape, [64, 1, 3, 3]);
  assert.equal(written.metadata.order, '2');
  // the same computation through the API (float32 params as written, sum-over-shots weight 1/K = 1)
  const p32 = Float64Array.from(theta, (v) => Math.fround(v));
  const set = (s: number, labels: number[]) => ({ images: Float64Array.from(images(5, s)), labels: Int32Array.from(labels), size: 5, lossWeight: 1 });
  const direct = await engine.metaGradient(p32, { tasks: 1, support: set(1.3, [0, 1, 2, 3, 4]), query: set(2.1, [4, 3, 2, 1, 0]) }, { steps: 1, stepSizes: 0.4, order: 2 });
  const head = engine.parameters().find((p) => p.name === 'head.weight')!;
  const got = written.tensors['head.weight'].data as Float64Array;
  for (let i = 0; i < head.size; i++) assert.ok(Math.abs(got[i] - direct.gradient[head.offset + i]) < 1e-12);
  // a missing tensor is named
  assert.throws(() => execFileSync(process.execPath, [cli, 'gradient', '--arch', 'omniglot', '--ways', '5', '--task', path.join(dir, 'p.safetensors'), '--out', out], { encoding: 'utf8', stdio: 'pipe' }),
    /support\.images/);
});
