// Lake et al.'s 20 runs through `evaluateLakeRuns`: shapes, error-rate arithmetic per run,
// and the refusals that keep the number honest (5-way models, non-Omniglot checkpoints).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { resolveTrainConfig } from '../src/train/config.js';
import { train } from '../src/train/trainer.js';
import { evaluateLakeRuns, formatLakeRuns } from '../src/eval/lakeRuns.js';
import { writeSyntheticOmniglot } from './helpers/syntheticOmniglot.js';
import { sharedData } from './helpers/sharedData.js';

const { dir: runs, skip } = sharedData('omniglot-runs');

test('Lake runs: a 20-way background-split model gets an error rate per run and their mean', { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'lake-'));
  await writeSyntheticOmniglot(path.join(dir, 'data', 'omniglot'), 220, 30, 2);
  const base = { dataset: 'omniglot' as const, shots: 1, metaBatch: 2, iterations: 2, split: 'background' as const, data: path.join(dir, 'data'), validationTasks: 2, innerSteps: 1 };
  const twenty = await train(resolveTrainConfig({ ...base, ways: 20, out: path.join(dir, 'twenty') }));
  const r = await evaluateLakeRuns({ checkpoint: twenty.runDir, runs: runs!, steps: 2 });
  assert.equal(r.runs.length, 20);
  for (const run of r.runs) {
    assert.equal(run.errorsPerStep.length, 3);
    // 20 test items per run: the error rate is a multiple of 1/20
    assert.ok(Math.abs(run.errorRate * 20 - Math.round(run.errorRate * 20)) < 1e-6);
  }
  const mean = r.runs.reduce((s, x) => s + x.errorRate, 0) / 20;
  assert.ok(Math.abs(r.meanErrorRate - mean) < 1e-12);
  assert.equal(r.warning, undefined);
  assert.match(formatLakeRuns(r), /mean .*95% CI/);
  const five = await train(resolveTrainConfig({ ...base, ways: 5, out: path.join(dir, 'five') }));
  await assert.rejects(evaluateLakeRuns({ checkpoint: five.runDir, runs: runs! }), /20-way.*5-way network.*--ways 20/);
});
