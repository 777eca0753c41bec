// `maml-native bench order` end to end on the tiny setting (through the CLI, fresh child
// processes and all), and the FLOP count of omniglot 5w1s against arithmetic written out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEngine } from '../src/native/engine.js';
import { metaGradientFlops } from '../src/bench/flops.js';
import { combineCeilings, spread } from '../src/bench/order.js';
import type { OrderBenchResult } from '../src/bench/order.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const close = (a: number, b: number, rel = 1e-9) => Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b));

test('FLOPs of omniglot 5w1s, counted from the layer shapes by hand', () => {
  const layers = createEngine({ arch: 'omniglot', ways: 5 }).layers();
  // multiply-adds per example: conv out C*H*W x in C x 9, linear in x out
  const m1 = 64 * 14 * 14 * 1 * 9;    // conv1 1x28x28 -> 64x14x14:   112,896
  const m2 = 64 * 7 * 7 * 64 * 9;     // conv2 -> 64x7x7:           1,806,336
  const m3 = 64 * 4 * 4 * 64 * 9;     // conv3 -> 64x4x4:             589,824
  const m4 = 64 * 2 * 2 * 64 * 9;     // conv4 -> 64x2x2:             147,456
  const m5 = 64 * 5;                  // head 64 -> 5:                     320
  const rest = m2 + m3 + m4 + m5;
  assert.equal(m1 + rest, 2_656_832);
  const forward = 2 * (m1 + rest);                 // 5,313,664 per example
  const backward = (2 + 2) * m1 + (2 + 2 + 2) * rest;  // forward + weight grad (+ input grad after the first layer): 15,715,200
  assert.equal(forward, 5_313_664);
  assert.equal(backward, 15_715_200);
  const tasks = 32, support = 5, query = 5, steps = 1;
  // inner loop, support loss after, query loss before, query gradient
  const firstOrder = tasks * (steps * support * backward + support * forward + query * forward + query * backward);
  assert.equal(firstOrder, 6_729_236_480);
  assert.equal(metaGradientFlops(layers, tasks, support, query, steps, false), firstOrder);
  // second order adds steps x support tangent forward+reverse: 8m for the first layer, 18m after
  const tangent = 8 * m1 + 18 * rest;
  assert.equal(metaGradientFlops(layers, tasks, support, query, steps, true), firstOrder + tasks * steps * support * tangent);
});

test('spread: median and quartiles by linear interpolation', () => {
  assert.deepEqual(spread([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, q1: 1.75, q3: 3.25, iqr: 1.5 });
});

test('GEMM ceiling: the faster of two readings, both kept', () => {
  const reading = (gflops: number) => ({ available: true, binary: 'b', size: 1024, threads: 2, seconds: 2 * 1024 ** 3 / gflops / 1e9, gflops, readings: [gflops] });
  const both = combineCeilings(reading(92), reading(141));
  assert.equal(both.gflops, 141);
  assert.ok(close(both.seconds!, 2 * 1024 ** 3 / 141 / 1e9));
  assert.deepEqual(both.readings, [92, 141]);
  assert.equal(combineCeilings(reading(150), reading(120)).gflops, 150);
  const missing = { available: false, binary: 'b', reason: 'missing' };
  assert.equal(combineCeilings(missing, reading(100)).gflops, 100);
  assert.equal(combineCeilings(reading(100), missing).gflops, 100);
});

test('bench order --quick --tiny writes self-consistent JSON, Markdown and a PNG', () => {
  const out = mkdtempSync(path.join(tmpdir(), 'bench-'));
  const printed = execFileSync(process.execPath, [cli, 'bench', 'order', '--quick', '--tiny', '--no-progress', '--out', out],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 55_000 });
  assert.match(printed, /\| setting \| order \| s\/iter median \| IQR \|/);
  assert.match(printed, /\| tiny-omniglot \| 2nd \|/);
  const r = JSON.parse(readFileSync(path.join(out, 'bench-order.json'), 'utf8')) as OrderBenchResult;
  assert.equal(r.device, 'cpu');
  assert.equal(r.quick, true);
  assert.match(r.flopRule, /multiply-add/);
  assert.ok(existsSync(path.join(out, 'bench-order.md')));
  assert.ok(existsSync(path.join(out, 'bench-order-sweep.png')));
  assert.deepEqual(r.rows.map((x) => [x.setting, x.order]), [['tiny-omniglot', 1], ['tiny-omniglot', 2]]);
  const gemm = r.gemm.available ? r.gemm.gflops! : null;
  if (gemm !== null) {  // readings before and after the settings; the ceiling is the best
    assert.equal(r.gemm.readings!.length, 2);
    assert.equal(gemm, Math.max(...r.gemm.readings!));
  }
  const setting = r.settings[0];
  const layers = createEngine({ arch: setting.arch, ways: setting.ways, imageSize: setting.imageSize, filters: setting.filters }).layers();
  for (const m of [...r.rows, ...r.sweep.flatMap((s) => s.points)]) {
    assert.equal(m.seconds.length, m.repeats);
    for (const v of [m.median, m.min, m.max, m.imagesPerSecond, m.flops, m.gflops, m.peakRssMiB, m.workspaceBytes]) assert.ok(v > 0, `${v} > 0`);
    assert.ok(m.min <= m.q1 && m.q1 <= m.median && m.median <= m.q3 && m.q3 <= m.max);
    assert.ok(close(m.iqr, m.q3 - m.q1));
    assert.ok(close(m.median, spread(m.seconds).median));
    assert.ok(close(m.gflops, m.flops / m.median / 1e9));
    assert.equal(m.imagesPerIteration, setting.metaBatch * setting.ways * (setting.shots + setting.queries));
    assert.ok(close(m.imagesPerSecond, m.imagesPerIteration / m.median));
    assert.ok(close(m.workspaceMiB, m.workspaceBytes / 1048576));
    assert.equal(m.flops, metaGradientFlops(layers, setting.metaBatch, setting.ways * setting.shots, setting.ways * setting.queries, m.steps, m.order === 2));
    if (gemm !== null) assert.ok(close(m.gemmFraction!, m.gflops / gemm));
  }
  // the main rows also time the trainer's call (no pre-adaptation pass); the sweep does not
  for (const m of r.rows) assert.ok(m.trainingMedian !== null && m.trainingMedian > 0, `training call timed for order ${m.order}`);
  for (const p of r.sweep.flatMap((s) => s.points)) assert.equal(p.trainingMedian, null);
  assert.match(printed, /training call s\/iter/);
  const [first, second] = r.rows;
  assert.ok(second.flops > first.flops);
  assert.equal(r.ratios.length, 1);
  assert.ok(close(r.ratios[0].time, second.median / first.median));
  assert.ok(close(r.ratios[0].peakRss, second.peakRssMiB / first.peakRssMiB));
  assert.ok(close(r.ratios[0].workspace, second.workspaceBytes / first.workspaceBytes));
  assert.deepEqual(r.sweep[0].steps, [1, 2, 5]);
  assert.equal(r.sweep[0].points.length, 6);
});

test('bench order --device cuda says why it cannot run', () => {
  assert.throws(() => execFileSync(process.execPath, [cli, 'bench', 'order', '--tiny', '--device', 'cuda'], { encoding: 'utf8', stdio: 'pipe' }),
    (e: { stderr?: string }) => /no CUDA device: .*--device cpu|not wired into the addon/.test(e.stderr ?? ''));
});
