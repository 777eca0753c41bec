// Evaluation as the original reports it: adapt on each seeded test task and give, for
// inner steps 0..S, the mean query accuracy over tasks with its std and 95% interval.
// The checkpoint is only read.
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { loadCheckpoint, readCheckpointConfig } from '../train/checkpoint.js';
import { trainingContext, CHECKPOINT_FILE } from '../train/trainer.js';
import type { TrainConfig } from '../train/config.js';
import { summarize, type Summary } from './statistics.js';
import { writeFileAtomic } from '../io/atomicFile.js';

export interface EvaluateOptions {
  checkpoint: string;          // a run folder or its checkpoint file
  data?: string;               // overrides the data folder stored with the run
  tasks?: number;              // default 600
  steps?: number;              // default: the run's test inner steps (10)
  seed?: number;               // default 0
  split?: 'test' | 'val';
  testQueries?: 'standard' | 'paper' | number;  // queries per class: 15 (standard), K (the paper's code)
  shots?: number;              // sinusoid only: K support points (and, unless testQueries, K query points) instead of the run's
  json?: string;
  csv?: string;
  onProgress?: (done: number, total: number) => void;
}

export interface EvaluationRow extends Summary {
  step: number;
}

export interface EvaluationResult {
  rows: EvaluationRow[];
  metric: 'accuracy' | 'mse';
  configuration: Record<string, unknown>;
  best: EvaluationRow;
}

export function resolveCheckpointFile(checkpoint: string): string {
  const file = existsSync(checkpoint) && statSync(checkpoint).isDirectory() ? path.join(checkpoint, CHECKPOINT_FILE) : checkpoint;
  if (!existsSync(file)) throw new Error(`no checkpoint at ${file}: give a run folder (holding ${CHECKPOINT_FILE}) or the file itself`);
  return file;
}

export function queriesFor(config: TrainConfig, testQueries: EvaluateOptions['testQueries']): { queries: number; label: string } {
  if (testQueries === 'paper') return { queries: config.shots, label: `paper (K = ${config.shots} per class, as the original code)` };
  if (typeof testQueries === 'number') return { queries: testQueries, label: `${testQueries} per class` };
  const standard = config.dataset === 'miniimagenet' ? 15 : config.testQueries;
  return { queries: standard, label: `standard (${standard} per class)` };
}

export async function evaluate(o: EvaluateOptions): Promise<EvaluationResult> {
  const file = resolveCheckpointFile(o.checkpoint);
  const { config: stored, iteration } = readCheckpointConfig<TrainConfig>(file);
  let config: TrainConfig = { ...stored, data: o.data ?? stored.data };
  if (o.shots !== undefined) {
    if (config.dataset !== 'sinusoid') throw new Error(`--shots at evaluation is for sinusoid runs only (this run is ${config.dataset})`);
    if (!(Number.isInteger(o.shots) && o.shots > 0)) throw new Error(`--shots must be a whole number >= 1, got ${o.shots}`);
    config = { ...config, shots: o.shots, queries: o.shots, testQueries: o.shots };
  }
  const context = trainingContext(config);
  const { parameters, extra } = loadCheckpoint<TrainConfig>(file, context.engine.parameters(), 'float32');
  // a pretrained baseline (sinusoid) fine-tunes with the step size chosen on validation tasks
  const fineTune = (extra?.fineTune as { stepSize?: number } | undefined)?.stepSize;
  const stepSize = fineTune ?? config.innerLr;
  const tasks = o.tasks ?? 600, steps = o.steps ?? config.testInnerSteps, seed = o.seed ?? 0;
  const { queries, label } = queriesFor(config, o.testQueries);
  const source = context.source(o.split ?? 'test', seed, undefined, queries);
  const perStep: number[][] = Array.from({ length: steps + 1 }, () => []);
  const regression = config.dataset === 'sinusoid';
  let done = 0;
  while (done < tasks) {
    const count = Math.min(config.metaBatch, tasks - done);
    const r = await context.engine.adaptAndEvaluate(parameters, source.next(count), { steps, stepSizes: stepSize });
    for (let t = 0; t < count; t++) {
      for (let k = 0; k <= steps; k++) {
        const index = t * (steps + 1) + k;
        // squared error per point: the loss weight of 'mean' already divides by the points
        perStep[k].push(regression ? r.queryLoss[index] : r.queryAccuracy[index]);
      }
    }
    done += count;
    o.onProgress?.(done, tasks);
  }
  const rows = perStep.map((values, step) => ({ step, ...summarize(values) }));
  const best = regression ? rows.reduce((a, b) => (b.mean < a.mean ? b : a)) : rows.reduce((a, b) => (b.mean > a.mean ? b : a));
  const configuration = {
    checkpoint: file, iteration, dataset: config.dataset, preset: config.preset, ways: config.ways, shots: config.shots,
    testQueries: label, queriesPerClass: queries, tasks, steps, seed, innerLr: config.innerLr, lossReduction: config.lossReduction,
    order: config.order, split: o.split ?? 'test',
    ...(regression ? {
      stepSize, stepSizeSource: fineTune !== undefined ? 'fine-tuning step size chosen on validation tasks (extra.fineTune)' : 'the run\'s inner lr',
      baseline: (config as TrainConfig & { baseline?: string }).baseline ?? 'none (MAML)', trainedShots: stored.shots,
    } : {}),
  };
  const result: EvaluationResult = { rows, metric: regression ? 'mse' : 'accuracy', configuration, best };
  if (o.json) writeFileAtomic(o.json, `${JSON.stringify({ configuration, metric: result.metric, rows }, null, 2)}\n`);
  if (o.csv) writeFileAtomic(o.csv, ['step,mean,std,ci95,count', ...rows.map((r) => `${r.step},${r.mean},${r.std},${r.ci95},${r.count}`)].join('\n') + '\n');
  return result;
}

/** The table as the paper prints it: accuracy in percent with its 95% interval. */
export function formatEvaluation(r: EvaluationResult): string {
  const c = r.configuration;
  const lines = [
    `${c.preset} (${c.ways}-way ${c.shots}-shot), checkpoint iteration ${c.iteration}, ${c.tasks} ${c.split} tasks, seed ${c.seed}, query images: ${c.testQueries}`,
    r.metric === 'accuracy' ? ' step   accuracy (%)   ± 95% CI    std (%)' : ' step   mean sq. error   ± 95% CI    std',
  ];
  for (const row of r.rows) {
    const scale = r.metric === 'accuracy' ? 100 : 1;
    const mark = row === r.best ? '  <- best' : '';
    lines.push(`${String(row.step).padStart(5)}   ${(row.mean * scale).toFixed(2).padStart(10)}   ± ${(row.ci95 * scale).toFixed(2).padStart(6)}   ${(row.std * scale).toFixed(2).padStart(8)}${mark}`);
  }
  return lines.join('\n');
}
