// Lake et al.'s 20 fixed 20-way 1-shot runs (Science 2015): each run adapts the meta-learned
// network on its 20 training images and classifies its 20 test images; reported as the
// mean error rate over the runs, as Lake et al. report it. The model must be 20-way and,
// to be a fair test, trained on the background split (the runs use evaluation alphabets).
import { createEngine } from '../native/engine.js';
import { loadLakeRuns } from '../data/lakeRuns.js';
import { loadCheckpoint, readCheckpointConfig } from '../train/checkpoint.js';
import { engineOptionsOf, type TrainConfig } from '../train/config.js';
import { lossWeight } from '../model/lossReduction.js';
import { resolveCheckpointFile } from './evaluate.js';
import { summarize } from './statistics.js';

export interface LakeRunsResult {
  runs: { name: string; errorRate: number; errorsPerStep: number[] }[];
  steps: number;
  meanErrorRate: number;
  meanErrorRateByStep: number[];
  ci95: number;
  split: string;
  warning?: string;
}

function toInputs(pixels: Uint8Array): Float32Array {
  // the cache's convention: strokes 1, background 0 (1 - pixel / 255, in float32)
  return Float32Array.from(pixels, (p) => Math.fround(1 - Math.fround(p / 255)));
}

export async function evaluateLakeRuns(o: { checkpoint: string; runs: string; steps?: number }): Promise<LakeRunsResult> {
  const file = resolveCheckpointFile(o.checkpoint);
  const { config } = readCheckpointConfig<TrainConfig>(file);
  if (config.dataset !== 'omniglot') throw new Error(`Lake's runs are Omniglot tasks; ${file} was trained on ${config.dataset}`);
  if (config.ways !== 20) throw new Error(`Lake's runs are 20-way; ${file} is a ${config.ways}-way network: train with --ways 20 --shots 1 --split background`);
  const engine = createEngine(engineOptionsOf(config));
  const { parameters } = loadCheckpoint<TrainConfig>(file, engine.parameters(), 'float32');
  const runs = await loadLakeRuns(o.runs);
  const steps = o.steps ?? config.testInnerSteps;
  const results: LakeRunsResult['runs'] = [];
  for (const run of runs) {
    const support = { images: toInputs(run.training), labels: Int32Array.from({ length: 20 }, (_, i) => i), size: 20, lossWeight: lossWeight(config.lossReduction, 20, 1) };
    const query = { images: toInputs(run.test), labels: run.testLabels, size: 20, lossWeight: lossWeight(config.lossReduction, 20, 1) };
    const r = await engine.adaptAndEvaluate(parameters, { tasks: 1, support, query }, { steps, stepSizes: config.innerLr });
    const errorsPerStep = Array.from(r.queryAccuracy, (a) => 1 - a);
    results.push({ name: run.name, errorRate: errorsPerStep[steps], errorsPerStep });
  }
  const byStep = Array.from({ length: steps + 1 }, (_, k) => results.reduce((s, r) => s + r.errorsPerStep[k], 0) / results.length);
  const summary = summarize(results.map((r) => r.errorRate));
  return {
    runs: results, steps, meanErrorRate: summary.mean, meanErrorRateByStep: byStep, ci95: summary.ci95, split: config.split,
    warning: config.split === 'background' ? undefined : `this model was trained on the '${config.split}' split, which may include the evaluation alphabets of the runs: train with --split background for a fair number`,
  };
}

export function formatLakeRuns(r: LakeRunsResult): string {
  const lines = [`Lake et al. 20-way 1-shot runs (${r.runs.length} runs, ${r.steps} inner steps, model split: ${r.split})`, ' run     error rate (%)'];
  for (const run of r.runs) lines.push(` ${run.name.padEnd(7)} ${(run.errorRate * 100).toFixed(1).padStart(8)}`);
  lines.push(` mean    ${(r.meanErrorRate * 100).toFixed(2).padStart(8)}  ± ${(r.ci95 * 100).toFixed(2)} (95% CI)`);
  lines.push(` by step: ${r.meanErrorRateByStep.map((e, k) => `${k}:${(e * 100).toFixed(1)}`).join('  ')}`);
  if (r.warning) lines.push(`note: ${r.warning}`);
  return lines.join('\n');
}
