// The trainer: exact resume, checkpoints that survive a crash, the CI arithmetic, and a
// configuration that records how a run was made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, fork } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveTrainConfig } from '../src/train/config.js';
import { train, CHECKPOINT_FILE } from '../src/train/trainer.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { createEngine } from '../src/native/engine.js';
import { summarize } from '../src/eval/statistics.js';
import { evaluate } from '../src/eval/evaluate.js';
import { adamStep, createAdamState } from '../src/train/adam.js';
import { writeSyntheticOmniglot } from './helpers/syntheticOmniglot.js';

const here = path.dirname(fileURLToPath(import.meta.url));

function tinyConfig(data: string, out: string, iterations: number) {
  return resolveTrainConfig({
    dataset: 'omniglot', ways: 5, shots: 1, metaBatch: 4, iterations, data, out, split: 'background',
    checkpointEvery: 5, validateEvery: 5, validationTasks: 4, seed: 3,
  });
}

test('10 + 10 resumed iterations give exactly the parameters of 20', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'resume-'));
  await writeSyntheticOmniglot(path.join(dir, 'data', 'omniglot'), 60, 10);
  const data = path.join(dir, 'data');
  await train(tinyConfig(data, path.join(dir, 'straight'), 20));
  await train(tinyConfig(data, path.join(dir, 'resumed'), 10));
  await assert.rejects(train(tinyConfig(data, path.join(dir, 'resumed'), 20)), /already holds a run.*--resume/);
  await train(tinyConfig(data, path.join(dir, 'resumed'), 20), { resume: true });
  const table = createEngine({ arch: 'omniglot', ways: 5 }).parameters();
  const a = loadCheckpoint(path.join(dir, 'straight', CHECKPOINT_FILE), table, 'float32');
  const b = loadCheckpoint(path.join(dir, 'resumed', CHECKPOINT_FILE), table, 'float32');
  assert.equal(a.iteration, 20);
  assert.equal(b.iteration, 20);
  assert.deepEqual(Array.from(b.parameters), Array.from(a.parameters));
  assert.deepEqual(Array.from(b.adam.v), Array.from(a.adam.v));
  // the metrics of the resumed run have one row per iteration, no duplicates
  const rows = readFileSync(path.join(dir, 'resumed', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).iteration);
  assert.deepEqual(rows, Array.from({ length: 20 }, (_, i) => i + 1));
  assert.ok(existsSync(path.join(dir, 'resumed', 'learning-curve.png')));
  const config = JSON.parse(readFileSync(path.join(dir, 'resumed', 'config.json'), 'utf8'));
  assert.equal(config.innerLr, 0.4);
  assert.equal(config.lossReduction, 'sum-over-shots');
});

test('evaluation never changes the checkpoint and reports fractions with a 95% interval', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'eval-'));
  await writeSyntheticOmniglot(path.join(dir, 'data', 'omniglot'), 60, 10);
  await train(tinyConfig(path.join(dir, 'data'), path.join(dir, 'run'), 5));
  const file = path.join(dir, 'run', CHECKPOINT_FILE);
  const before = readFileSync(file);
  const json = path.join(dir, 'eval.json');
  const r = await evaluate({ checkpoint: path.join(dir, 'run'), tasks: 12, steps: 3, json });
  assert.deepEqual(readFileSync(file), before);
  assert.equal(r.rows.length, 4);
  const written = JSON.parse(readFileSync(json, 'utf8'));
  for (const row of written.rows) {
    assert.ok(row.mean >= 0 && row.mean <= 1);
    assert.ok(Math.abs(row.ci95 - (1.96 * row.std) / Math.sqrt(12)) < 1e-12);
  }
  assert.equal(written.configuration.tasks, 12);
});

test('95% interval arithmetic against a hand-computed example', () => {
  // values 0.6, 0.8, 1.0, 1.0: mean 0.85, population variance (0.0625+0.0025+0.0225+0.0225)/4 = 0.0275
  const s = summarize([0.6, 0.8, 1.0, 1.0]);
  assert.ok(Math.abs(s.mean - 0.85) < 1e-15);
  assert.ok(Math.abs(s.std - Math.sqrt(0.0275)) < 1e-15);
  assert.ok(Math.abs(s.ci95 - (1.96 * Math.sqrt(0.0275)) / 2) < 1e-15);
});

test('Adam follows the TensorFlow update on a hand-computed step', () => {
  const p = Float64Array.from([1.0]);
  const state = createAdamState(1);
  adamStep(p, [0.5], state, { learningRate: 0.1 });
  // m = 0.05, v = 0.00025, lr_t = 0.1 * sqrt(0.001) / 0.1; step = lr_t * m / (sqrt(v) + 1e-8)
  const lr = (0.1 * Math.sqrt(1 - 0.999)) / (1 - 0.9);
  assert.ok(Math.abs(p[0] - (1 - (lr * 0.05) / (Math.sqrt(0.00025) + 1e-8))) < 1e-15);
});

test('a checkpoint killed mid-write leaves the previous one whole', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'crash-'));
  const file = path.join(dir, CHECKPOINT_FILE);
  const child = fork(path.join(here, 'helpers', 'checkpointWriter.js'), [file], { stdio: 'ignore' });
  // wait for the first whole checkpoint, then kill the writer in the middle of later ones
  for (let waited = 0; !existsSync(file) && waited < 20000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
  await new Promise((resolve) => setTimeout(resolve, 150));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.on('exit', resolve));
  assert.ok(existsSync(file), 'the writer wrote at least one checkpoint before it was killed');
  const table = [{ name: 'w', shape: [1 << 20], offset: 0, size: 1 << 20, adapted: true }];
  const saved = loadCheckpoint<{ n: number }>(file, table, 'float32');
  // every element of a checkpoint holds its iteration number: a torn write would mix two
  assert.ok(saved.parameters.every((v) => v === saved.iteration));
  assert.ok(saved.iteration >= 1);
  // a failed write leaves the old file and no temporary behind
  mkdirSync(`${file}.tmp-${process.pid}`);
  assert.throws(() => saveCheckpoint(file, table, { config: {}, iteration: 999, parameters: new Float32Array(1 << 20), adam: createAdamState(1 << 20), samplerState: {} }), /could not write/);
  assert.equal(loadCheckpoint(file, table, 'float32').iteration, saved.iteration);
  // what a killed writer leaves is only a temporary under another name, never the checkpoint
  assert.ok(readdirSync(dir).filter((f) => f !== CHECKPOINT_FILE).every((f) => f.startsWith(`${CHECKPOINT_FILE}.tmp-`)));
});

test('a non-finite loss stops the run with a clear message and keeps the last good checkpoint', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nan-'));
  await writeSyntheticOmniglot(path.join(dir, 'data', 'omniglot'), 60, 10);
  const data = path.join(dir, 'data'), out = path.join(dir, 'run');
  await train(tinyConfig(data, out, 5));
  const good = readFileSync(path.join(out, CHECKPOINT_FILE));
  // an absurd inner step size drives the adapted weights, and then the loss, to infinity
  const config = { ...tinyConfig(data, out, 10), innerLr: 1e300 };
  await assert.rejects(train(config, { resume: true }), /iteration 6: the (query loss|meta-gradient) is not finite.*last good checkpoint is .*checkpoint\.safetensors/s);
  assert.deepEqual(readFileSync(path.join(out, CHECKPOINT_FILE)), good);
});

test('--time-limit stops with a checkpoint; the pre-adaptation accuracy is sampled every 10th iteration', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'time-limit-'));
  await writeSyntheticOmniglot(path.join(dir, 'data', 'omniglot'), 60, 10);
  const cli = path.join(here, '..', 'src', 'cli', 'main.js');
  const out = path.join(dir, 'run');
  const flags = ['train', '--dataset', 'omniglot', '--ways', '5', '--shots', '1', '--meta-batch', '2', '--split', 'background',
    '--data', path.join(dir, 'data'), '--out', out, '--iterations', '1000000', '--validate-every', '1000000'];
  assert.throws(() => execFileSync(process.execPath, [cli, ...flags, '--time-limit', '0'], { encoding: 'utf8', stdio: 'pipe' }),
    /--time-limit must be a positive number of minutes, got 0/);
  const printed = execFileSync(process.execPath, [cli, ...flags, '--time-limit', '0.1'], { encoding: 'utf8', stdio: 'pipe' });
  const stopped = /stopped at iteration (\d+)/.exec(printed);
  assert.ok(stopped, printed);
  const iterations = Number(stopped[1]);
  assert.ok(iterations > 10 && iterations < 1000000, `stopped at ${iterations}`);
  const table = createEngine({ arch: 'omniglot', ways: 5 }).parameters();
  assert.equal(loadCheckpoint(path.join(out, CHECKPOINT_FILE), table, 'float32').iteration, iterations);
  const csv = readFileSync(path.join(out, 'metrics.csv'), 'utf8').trim().split('\n');
  const column = csv[0].split(',').indexOf('queryAccuracyBefore');
  const before = csv.slice(1).map((line) => line.split(',')[column]);
  assert.equal(before.length, iterations);
  before.forEach((cell, i) => {
    // row i is iteration i + 1, computed from the parameters after i updates
    if (i % 10 === 0) assert.ok(Number(cell) >= 0 && Number(cell) <= 1, `iteration ${i + 1}: ${cell}`);
    else assert.equal(cell, '', `iteration ${i + 1} is not measured`);
  });
});
