// Sinusoid regression end to end: the task sampler, the squared-error rules through the
// real engine against finite differences (float64), the MATH.md scalar case, the
// pretrained baseline and its step-size selection, evaluation with another K, and the
// PNG figures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { createEngine, type MetaBatch } from '../src/native/engine.js';
import { AMPLITUDE, INPUT_RANGE, PHASE, SinusoidSampler, sinusoid } from '../src/data/sinusoid.js';
import { resolveTrainConfig } from '../src/train/config.js';
import { train } from '../src/train/trainer.js';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { evaluate } from '../src/eval/evaluate.js';
import { fineTunedErrors, gridSearch, pickStepSize, selectFineTuneStepSize, trainPretrainedBaseline, FINE_TUNE_GRID } from '../src/sinusoid/baseline.js';
import { openRun, taskFits } from '../src/sinusoid/plots.js';
import { perTaskErrors, robustSummary, sinusoidReport } from '../src/sinusoid/report.js';
import { formatComparison } from '../src/sinusoid/compare.js';

const toF64 = (b: MetaBatch): MetaBatch => ({
  tasks: b.tasks,
  support: { ...b.support, images: Float64Array.from(b.support.images!), targets: Float64Array.from(b.support.targets!) },
  query: { ...b.query, images: Float64Array.from(b.query.images!), targets: Float64Array.from(b.query.targets!) },
});

test('sampler: ranges, targets, determinism and an exact resume from getState', () => {
  const s = new SinusoidSampler(5);
  const { batch, tasks } = s.sample(400, 10, 7);
  assert.equal(batch.support.images!.length, 4000);
  assert.equal(batch.query.images!.length, 2800);
  assert.equal(batch.support.lossWeight, 1 / 10);
  assert.equal(batch.query.lossWeight, 1 / 7);
  let minA = Infinity, maxA = -Infinity, minP = Infinity, maxP = -Infinity, minX = Infinity, maxX = -Infinity;
  tasks.forEach((task, t) => {
    minA = Math.min(minA, task.amplitude); maxA = Math.max(maxA, task.amplitude);
    minP = Math.min(minP, task.phase); maxP = Math.max(maxP, task.phase);
    for (const [set, n] of [[batch.support, 10], [batch.query, 7]] as const) {
      for (let i = 0; i < n; i++) {
        const x = set.images![t * n + i];
        minX = Math.min(minX, x); maxX = Math.max(maxX, x);
        assert.ok(Math.abs(set.targets![t * n + i] - sinusoid(task, x)) < 1e-5, 'target = A sin(x - phase)');
      }
    }
  });
  assert.ok(minA >= AMPLITUDE[0] && maxA <= AMPLITUDE[1] && minA < 0.3 && maxA > 4.8, `amplitudes in [${minA}, ${maxA}]`);
  assert.ok(minP >= PHASE[0] && maxP <= PHASE[1] && minP < 0.1 && maxP > 3.0, `phases in [${minP}, ${maxP}]`);
  assert.ok(minX >= INPUT_RANGE[0] && maxX <= INPUT_RANGE[1] && minX < -4.9 && maxX > 4.9, `x in [${minX}, ${maxX}]`);
  const meanA = tasks.reduce((a, t) => a + t.amplitude, 0) / tasks.length;
  assert.ok(Math.abs(meanA - 2.55) < 0.25, `mean amplitude ${meanA} (uniform on [0.1, 5]: 2.55)`);

  const a = new SinusoidSampler(11).sample(3, 5, 5), b = new SinusoidSampler(11).sample(3, 5, 5), c = new SinusoidSampler(12).sample(3, 5, 5);
  assert.deepEqual(a.batch.support.images, b.batch.support.images);
  assert.deepEqual(a.tasks, b.tasks);
  assert.notDeepEqual(a.batch.support.images, c.batch.support.images);

  const run = new SinusoidSampler(3);
  run.sample(4, 10, 10);
  const state = JSON.parse(JSON.stringify(run.getState()));
  const next = run.sample(2, 10, 10);
  const resumed = new SinusoidSampler(3, state).sample(2, 10, 10);
  assert.deepEqual(resumed.batch.query.targets, next.batch.query.targets);
  assert.deepEqual(resumed.tasks, next.tasks);
});

test('squared error through the engine (float64): loss value, loss gradient and second-order meta-gradient match finite differences', async () => {
  const engine = createEngine({ arch: 'sinusoid', ways: 1, dtype: 'float64' });
  const theta = engine.initialize(4) as Float64Array;
  const batch = toF64(new SinusoidSampler(9).sample(2, 5, 5).batch);
  // the loss itself: (1/points) * sum of squared errors, per task
  const r0 = await engine.metaGradient(theta, batch, { steps: 0, stepSizes: 0, order: 1 });
  for (let t = 0; t < 2; t++) {
    const z = engine.forward(theta, { images: batch.query.images!.subarray(t * 5, t * 5 + 5), size: 5, lossWeight: 0.2 }).logits;
    let l = 0;
    for (let i = 0; i < 5; i++) l += (z[i] - batch.query.targets![t * 5 + i]) ** 2;
    assert.ok(Math.abs(r0.queryLossAfter[t] - l / 5) < 1e-12, `task ${t}: loss ${r0.queryLossAfter[t]} vs ${l / 5}`);
  }
  const loss0 = async (p: Float64Array) => {
    const r = await engine.adaptAndEvaluate(p, batch, { steps: 0, stepSizes: 0 });
    return (r.queryLoss[0] + r.queryLoss[1]) / 2;
  };
  const eps = 1e-6;
  const moved = (i: number, e: number) => { const p = theta.slice(); p[i] += e; return p; };
  const indices = [0, 17, 39, 40, 63, 80, 333, 1000, 1599, 1600, 1620, 1639, 1640, 1660, 1679, 1680, 1700, 1719, 1720, 1740, 1759, 1760];
  let worst = 0;
  for (const i of indices) {
    const fd = ((await loss0(moved(i, eps))) - (await loss0(moved(i, -eps)))) / (2 * eps);
    worst = Math.max(worst, Math.abs(fd - r0.gradient[i]) / Math.max(1, Math.abs(fd)));
  }
  assert.ok(worst < 1e-6, `loss gradient vs central differences: worst relative error ${worst}`);
  assert.ok(Math.abs(r0.gradient[1760]) > 1e-3, 'the head bias gradient is not trivially zero');
  // steps 0, order 1 ignores the support set (the pretrained baseline's gradient)
  const garbage = { ...batch, support: { ...batch.support, targets: batch.support.targets!.map(() => 100) } };
  assert.deepEqual((await engine.metaGradient(theta, garbage, { steps: 0, stepSizes: 0, order: 1 })).gradient, r0.gradient);

  // second order: d/dtheta of the query loss after one step on the support set
  const loop = { steps: 1, stepSizes: 0.05, order: 2 as const };
  const { gradient } = await engine.metaGradient(theta, batch, loop);
  const metaLoss = async (p: Float64Array) => {
    const r = await engine.adaptAndEvaluate(p, batch, { steps: 1, stepSizes: 0.05 });
    return (r.queryLoss[1] + r.queryLoss[3]) / 2;
  };
  const direction = Float64Array.from(theta, (_, i) => Math.sin(i * 12.9898));
  const along = (e: number) => Float64Array.from(theta, (v, i) => v + e * direction[i]);
  const fd = ((await metaLoss(along(eps))) - (await metaLoss(along(-eps)))) / (2 * eps);
  let exact = 0;
  gradient.forEach((g, i) => { exact += g * direction[i]; });
  assert.ok(Math.abs(exact - fd) <= 1e-6 * Math.max(1, Math.abs(fd)), `second-order directional derivative ${exact} vs finite difference ${fd}`);
  const first = await engine.metaGradient(theta, batch, { ...loop, order: 1 });
  let firstAlong = 0;
  first.gradient.forEach((g, i) => { firstAlong += g * direction[i]; });
  assert.ok(Math.abs(firstAlong - fd) > 1e-4, 'the first-order gradient differs from the exact one here (the test can tell them apart)');
});

test('MATH.md scalar case through the engine: y = w x + b, first order -0.8, second order -0.64', async () => {
  const engine = createEngine({ arch: 'sinusoid', ways: 1, dtype: 'float64', hidden: [] });
  const table = engine.parameters();
  assert.deepEqual(table.map((p) => [p.name, p.size]), [['head.weight', 1], ['head.bias', 1]]);
  const w = table.findIndex((p) => p.name === 'head.weight'), b = table.findIndex((p) => p.name === 'head.bias');
  const params = new Float64Array(2);
  params[table[w].offset] = 0.5;
  params[table[b].offset] = 0;
  const set = { images: Float64Array.from([1]), targets: Float64Array.from([1]), size: 1, lossWeight: 1 };
  const batch: MetaBatch = { tasks: 1, support: set, query: set };
  const stepSizes = new Float64Array(2);
  stepSizes[w] = 0.1;
  stepSizes[b] = 0;
  const first = await engine.metaGradient(params, batch, { steps: 1, stepSizes, order: 1 });
  const second = await engine.metaGradient(params, batch, { steps: 1, stepSizes, order: 2 });
  assert.ok(Math.abs(first.gradient[table[w].offset] - -0.8) < 1e-6, `first order ${first.gradient[table[w].offset]}`);
  assert.ok(Math.abs(second.gradient[table[w].offset] - -0.64) < 1e-6, `second order ${second.gradient[table[w].offset]}`);
  assert.ok(Math.abs(first.queryLossBefore[0] - 0.25) < 1e-12 && Math.abs(first.queryLossAfter[0] - 0.16) < 1e-12, 'loss (0.5-1)^2 = 0.25 before, (0.6-1)^2 = 0.16 after');
});

test('step-size selection picks the minimum (ties: the smaller; diverged never)', async () => {
  const scores = [0.001, 0.003, 0.01, 0.02, 0.05, 0.1].map((stepSize) => ({ stepSize, mse: (Math.log(stepSize) - Math.log(0.02)) ** 2 + 1, ci95: 0 }));
  assert.equal(pickStepSize(scores).stepSize, 0.02);
  assert.equal(pickStepSize([{ stepSize: 0.1, mse: NaN, ci95: 0 }, { stepSize: 0.05, mse: 3, ci95: 0 }, { stepSize: 0.2, mse: Infinity, ci95: 0 }]).stepSize, 0.05);
  assert.equal(pickStepSize([{ stepSize: 0.05, mse: 2, ci95: 0 }, { stepSize: 0.01, mse: 2, ci95: 0 }]).stepSize, 0.01);
  const { chosen, scores: searched } = await gridSearch(FINE_TUNE_GRID, async (lr) => [Math.abs(lr - 0.05) + 1, Math.abs(lr - 0.05) + 3]);
  assert.equal(chosen.stepSize, 0.05);
  assert.equal(searched.length, FINE_TUNE_GRID.length);
  assert.ok(Math.abs(searched[0].mse - (2 + 0.049)) < 1e-12, 'score = mean of the validation errors');
});

const workDir = mkdtempSync(path.join(tmpdir(), 'maml-sinusoid-'));
const baselineDir = path.join(workDir, 'baseline'), mamlDir = path.join(workDir, 'maml');

test('pretrained baseline: trains with the query loss at the shared weights, lowers it, stores a chosen step size eval uses', async () => {
  const config = resolveTrainConfig({ dataset: 'sinusoid', iterations: 400, out: baselineDir, validateEvery: 400, checkpointEvery: 400, seed: 3 });
  const result = await trainPretrainedBaseline(config, {}, { tasks: 100 });
  const engine = createEngine({ arch: 'sinusoid', ways: 1 });
  const saved = loadCheckpoint<Record<string, unknown>>(result.checkpoint, engine.parameters(), 'float32');
  assert.equal(saved.config.baseline, 'pretrained');
  assert.equal(saved.config.innerSteps, 0);
  assert.equal(saved.iteration, 400);
  const probe = { shots: 10, queries: 10, tasks: 200, seed: 77, steps: 0, stepSize: 0 };
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  const before = mean(await fineTunedErrors(engine, engine.initialize(3), probe));
  const after = mean(await fineTunedErrors(engine, saved.parameters, probe));
  assert.ok(after < before - 0.3, `query MSE at the shared weights: ${before} at initialisation, ${after} after 400 iterations`);
  const fineTune = saved.extra!.fineTune as { stepSize: number; grid: { stepSize: number; mse: number }[] };
  assert.equal(fineTune.stepSize, result.fineTune.stepSize);
  assert.ok(FINE_TUNE_GRID.includes(fineTune.stepSize));
  const finite = fineTune.grid.filter((g) => Number.isFinite(g.mse));
  assert.equal(fineTune.stepSize, finite.reduce((a, b) => (b.mse < a.mse ? b : a)).stepSize, 'the chosen one has the lowest validation MSE');
  // selection is reproducible and its scores are the fine-tuned validation errors
  const again = await selectFineTuneStepSize(engine, saved.parameters, { ...config, baseline: 'pretrained' } as never, { tasks: 100, grid: [fineTune.stepSize] });
  assert.ok(Math.abs(again.grid[0].mse - fineTune.grid.find((g) => g.stepSize === fineTune.stepSize)!.mse) < 1e-9);
  assert.ok(existsSync(path.join(baselineDir, 'fine-tune.json')));

  const evaluated = await evaluate({ checkpoint: baselineDir, tasks: 50, shots: 5 });
  const c = evaluated.configuration as Record<string, unknown>;
  assert.equal(c.stepSize, fineTune.stepSize);
  assert.equal(c.baseline, 'pretrained');
  assert.equal(c.shots, 5);
  assert.equal(c.queriesPerClass, 5);
  assert.equal(evaluated.rows.length, 11);
  assert.equal(evaluated.metric, 'mse');
  assert.ok(Math.abs(evaluated.rows[0].mean - after) < 1.5, 'step 0 of eval is the MSE at the shared weights');
});

test('MAML run, eval with another K, comparison table and the PNG figures', async () => {
  const config = resolveTrainConfig({ dataset: 'sinusoid', iterations: 300, out: mamlDir, validateEvery: 300, checkpointEvery: 300, seed: 3 });
  await train(config);
  const maml = await evaluate({ checkpoint: mamlDir, tasks: 50, shots: 5 });
  assert.equal((maml.configuration as Record<string, unknown>).stepSize, 0.01);
  assert.ok(maml.rows[1].mean < maml.rows[0].mean, `one step on the K points lowers MAML's error (${maml.rows[0].mean} -> ${maml.rows[1].mean})`);
  const table = formatComparison([maml, await evaluate({ checkpoint: baselineDir, tasks: 50, shots: 5 })]);
  assert.match(table, /MAML \(order 2\)/);
  assert.match(table, /pretrained/);
  assert.equal(table.split('\n').filter((l) => /^\s+\d+\s/.test(l)).length, 11);

  const runs = [openRun(mamlDir), openRun(baselineDir)];
  const fits = await taskFits(runs, { shots: 5, tasks: 2, seed: 7 });
  const step0 = runs[0].engine.forward(runs[0].parameters, { images: Float32Array.from(fits[0].grid), size: fits[0].grid.length, lossWeight: 1 }).logits;
  assert.ok(Math.abs(fits[0].predictions[runs[0].label][0][50] - step0[50]) < 1e-6, 'step 0 predicts with the meta-learned weights');
  assert.ok(Math.abs(fits[0].predictions[runs[0].label][1][50] - step0[50]) > 1e-6, 'one step changes the prediction');
  fits[0].support.x.forEach((x, i) => assert.ok(Math.abs(fits[0].support.y[i] - sinusoid(fits[0].task, x)) < 1e-5));

  // the per-task errors are the same tasks evaluate() averages
  const perTask = await perTaskErrors(runs[0], { shots: 5, tasks: 50, seed: 0, steps: 10 });
  for (const k of [0, 1, 10]) {
    const m = perTask.reduce((a, e) => a + e[k], 0) / perTask.length;
    assert.ok(Math.abs(m - maml.rows[k].mean) < 1e-9 * Math.max(1, Math.abs(m)), `step ${k}: ${m} vs ${maml.rows[k].mean}`);
  }
  const robust = robustSummary([[1, 5], [2, NaN], [3, 500], [4, 7]]);
  assert.deepEqual(robust.map((r) => [r.median, r.diverged, r.meanOfRest]), [[2.5, 0, 2.5], [253.5, 2, 6]]);

  const out = path.join(workDir, 'report');
  const report = await sinusoidReport({ runs: [mamlDir, baselineDir], shots: [5], tasks: 40, plotTasks: 2, out });
  for (const name of ['fits-K5.png', 'mse-vs-steps-K5.png']) {
    const file = path.join(out, name);
    assert.ok(report.files.includes(file), `${name} reported`);
    const meta = await sharp(file).metadata();
    assert.equal(meta.format, 'png');
    assert.ok((meta.width ?? 0) >= 600 && (meta.height ?? 0) >= 400, `${name}: ${meta.width}x${meta.height}`);
    assert.deepEqual([...readFileSync(file).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  }
  const fitsMeta = await sharp(path.join(out, 'fits-K5.png')).metadata();
  assert.deepEqual([fitsMeta.width, fitsMeta.height], [2 * 620, 2 * 380], 'a panel per task and run');
  const json = JSON.parse(readFileSync(path.join(out, 'eval-K5.json'), 'utf8'));
  assert.equal(json.length, 2);
  assert.equal(json[0].rows.length, 11);
  assert.ok(existsSync(path.join(out, 'table.md')));
});
