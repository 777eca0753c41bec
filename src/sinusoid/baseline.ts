// The paper's "pretrained" baseline for sinusoid regression: the same network trained on
// the same task stream to regress every sampled task at the shared weights (no inner
// loop: the engine's metaGradient with steps 0 and order 1 is the gradient of the query
// loss at the given weights, averaged over the meta-batch; Adam as for MAML), then
// fine-tuned at test time with plain gradient descent on the K points. Its fine-tuning
// step size is picked on validation tasks: for each step size of a grid, the mean query
// MSE over the same validation tasks after `steps` steps; the lowest wins (ties: the
// smaller step size). The choice is stored in the checkpoint (extra.fineTune), so eval
// uses it instead of the MAML inner lr.
import path from 'node:path';
import type { FloatArray, NativeEngine } from '../native/engine.js';
import type { TrainConfig } from '../train/config.js';
import { loadCheckpoint, saveCheckpoint } from '../train/checkpoint.js';
import { train, type TrainOptions, type TrainResult } from '../train/trainer.js';
import { createEngine } from '../native/engine.js';
import { engineOptionsOf } from '../train/config.js';
import { writeFileAtomic } from '../io/atomicFile.js';
import { summarize } from '../eval/statistics.js';
import { SinusoidTaskSource } from '../train/taskSources.js';

export type BaselineKind = 'pretrained';

/** A training configuration that may be the pretrained baseline (stored with the run). */
export interface SinusoidRunConfig extends TrainConfig {
  baseline?: BaselineKind;
}

export const FINE_TUNE_GRID = [0.001, 0.003, 0.01, 0.02, 0.05, 0.1];
export const FINE_TUNE_STEPS = 10;
export const FINE_TUNE_VALIDATION_TASKS = 600;
/** Validation tasks come from seed + this offset: not the training stream (seed), not validate()'s (seed + 1000), not eval's (0). */
export const FINE_TUNE_SEED_OFFSET = 2000;

export interface StepSizeScore {
  stepSize: number;
  mse: number;
  ci95: number;
}

export interface FineTuneSelection {
  stepSize: number;
  steps: number;
  tasks: number;
  seed: number;
  shots: number;
  grid: StepSizeScore[];
  rule: string;
}

/** The configuration of the baseline: same network, data, seed, meta-batch, Adam and iterations; no inner loop. */
export function pretrainedBaselineConfig(config: TrainConfig): SinusoidRunConfig {
  if (config.dataset !== 'sinusoid') throw new Error(`--baseline pretrained is for --dataset sinusoid (got ${config.dataset})`);
  return { ...config, baseline: 'pretrained', innerSteps: 0, order: 1, preset: `${config.preset} pretrained baseline` };
}

export function isPretrainedBaseline(config: TrainConfig): boolean {
  return (config as SinusoidRunConfig).baseline === 'pretrained';
}

/** The lowest score wins; on a tie the smaller step size; a diverged one (NaN or infinite MSE) never wins unless all did. */
export function pickStepSize(scores: StepSizeScore[]): StepSizeScore {
  if (scores.length === 0) throw new Error('pickStepSize: no step sizes');
  const key = (s: StepSizeScore) => (Number.isFinite(s.mse) ? s.mse : Infinity);
  return scores.reduce((best, s) => (key(s) < key(best) || (key(s) === key(best) && s.stepSize < best.stepSize) ? s : best));
}

/** Scores every step size of the grid with `measure` (the validation MSEs of its tasks) and picks one. */
export async function gridSearch(grid: number[], measure: (stepSize: number) => Promise<number[]>): Promise<{ chosen: StepSizeScore; scores: StepSizeScore[] }> {
  const scores: StepSizeScore[] = [];
  for (const stepSize of grid) {
    const s = summarize(await measure(stepSize));
    scores.push({ stepSize, mse: s.mean, ci95: s.ci95 });
  }
  return { chosen: pickStepSize(scores), scores };
}

/** Query MSE after `steps` gradient steps of size `stepSize` on each of `tasks` sinusoid tasks of a seeded stream. */
export async function fineTunedErrors(engine: NativeEngine, parameters: FloatArray, o: { shots: number; queries: number; tasks: number; seed: number; steps: number; stepSize: number; metaBatch?: number }): Promise<number[]> {
  const source = new SinusoidTaskSource(o.seed, o.shots, o.queries);
  const out: number[] = [];
  const chunk = o.metaBatch ?? 25;
  while (out.length < o.tasks) {
    const count = Math.min(chunk, o.tasks - out.length);
    const r = await engine.adaptAndEvaluate(parameters, source.next(count), { steps: o.steps, stepSizes: o.stepSize });
    for (let t = 0; t < count; t++) out.push(r.queryLoss[t * (o.steps + 1) + o.steps]);
  }
  return out;
}

export async function selectFineTuneStepSize(engine: NativeEngine, parameters: FloatArray, config: TrainConfig,
  o: { grid?: number[]; steps?: number; tasks?: number } = {}): Promise<FineTuneSelection> {
  const grid = o.grid ?? FINE_TUNE_GRID, steps = o.steps ?? FINE_TUNE_STEPS, tasks = o.tasks ?? FINE_TUNE_VALIDATION_TASKS;
  const seed = config.seed + FINE_TUNE_SEED_OFFSET;
  const { chosen, scores } = await gridSearch(grid, (stepSize) =>
    fineTunedErrors(engine, parameters, { shots: config.shots, queries: config.queries, tasks, seed, steps, stepSize, metaBatch: config.metaBatch }));
  return {
    stepSize: chosen.stepSize, steps, tasks, seed, shots: config.shots, grid: scores,
    rule: `lowest mean query MSE after ${steps} gradient steps on the K = ${config.shots} support points of ${tasks} validation tasks (seed ${seed}), same tasks for every step size`,
  };
}

export function formatSelection(s: FineTuneSelection): string {
  const lines = [`fine-tuning step size: ${s.stepSize} (${s.rule})`, '  step size   val. MSE after ' + s.steps + ' steps'];
  for (const g of s.grid) lines.push(`  ${String(g.stepSize).padStart(9)}   ${Number.isFinite(g.mse) ? `${g.mse.toFixed(4)} ± ${g.ci95.toFixed(4)}` : 'diverged'}${g.stepSize === s.stepSize ? '  <- chosen' : ''}`);
  return lines.join('\n');
}

/** Picks the step size for a trained baseline and writes it into its checkpoint (extra.fineTune) and fine-tune.json. */
export async function storeFineTuneSelection(checkpointFile: string, config: TrainConfig, o: { grid?: number[]; steps?: number; tasks?: number } = {}): Promise<FineTuneSelection> {
  const engine = createEngine(engineOptionsOf(config));
  const table = engine.parameters();
  const saved = loadCheckpoint<TrainConfig>(checkpointFile, table, 'float32');
  const selection = await selectFineTuneStepSize(engine, saved.parameters, config, o);
  saveCheckpoint(checkpointFile, table, { ...saved, extra: { ...(saved.extra ?? {}), fineTune: selection } });
  writeFileAtomic(path.join(path.dirname(checkpointFile), 'fine-tune.json'), `${JSON.stringify(selection, null, 2)}\n`);
  return selection;
}

/** Trains the pretrained baseline with the ordinary trainer (steps 0, order 1), then picks its fine-tuning step size. */
export async function trainPretrainedBaseline(config: TrainConfig, options: TrainOptions = {}, selection: { grid?: number[]; steps?: number; tasks?: number } = {}): Promise<TrainResult & { fineTune: FineTuneSelection }> {
  const baseline = isPretrainedBaseline(config) ? config : pretrainedBaselineConfig(config);
  const result = await train(baseline, options);
  const fineTune = await storeFineTuneSelection(result.checkpoint, baseline, selection);
  return { ...result, fineTune };
}

