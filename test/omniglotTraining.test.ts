// A short real training run: a slice of the real Omniglot (a few alphabets of each
// source), meta-trained for a few hundred iterations, then evaluated on the held-out
// evaluation alphabets. It must be well above the 20% of chance.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { prepareOmniglot } from '../src/data/omniglotPrepare.js';
import { resolveTrainConfig } from '../src/train/config.js';
import { train } from '../src/train/trainer.js';
import { evaluate } from '../src/eval/evaluate.js';
import { sharedData } from './helpers/sharedData.js';

const { dir: omniglot, skip } = sharedData('omniglot');

test('meta-training on real Omniglot characters beats chance by far on unseen alphabets', { skip, timeout: 600_000 }, async () => {
  const work = mkdtempSync(path.join(tmpdir(), 'omniglot-train-'));
  const src = path.join(work, 'src');
  for (const [source, count] of [['images_background', 6], ['images_evaluation', 2]] as const) {
    mkdirSync(path.join(src, source), { recursive: true });
    for (const alphabet of readdirSync(path.join(omniglot!, source)).sort().slice(0, count)) {
      symlinkSync(path.join(omniglot!, source, alphabet), path.join(src, source, alphabet));
    }
  }
  const prepared = await prepareOmniglot({ src, out: path.join(work, 'data') });
  assert.ok(prepared.index.classes.length > 100);
  const config = resolveTrainConfig({
    dataset: 'omniglot', ways: 5, shots: 1, metaBatch: 8, iterations: 250, split: 'background', seed: 2,
    data: path.join(work, 'data'), out: path.join(work, 'run'), checkpointEvery: 250, validateEvery: 250, validationTasks: 16,
  });
  const result = await train(config);
  const evaluation = await evaluate({ checkpoint: result.runDir, tasks: 100, steps: 5 });
  const before = evaluation.rows[0].mean, best = evaluation.best.mean;
  console.log(`# ${result.secondsPerIteration.toFixed(3)} s/iteration; test accuracy before adaptation ${(before * 100).toFixed(1)}%, best after ${(best * 100).toFixed(1)}% (step ${evaluation.best.step})`);
  assert.ok(best > 0.5, `accuracy after adaptation ${best} should be far above chance (0.2)`);
  assert.ok(best > before + 0.15, `adaptation should help: ${before} before, ${best} after`);
});
