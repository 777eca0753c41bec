// The meta-training loop: sample a meta-batch (indices only), one native call for its
// meta-gradient, Adam in TypeScript, metrics, validation and atomic checkpoints. A run can
// be stopped at any point (Ctrl-C writes a checkpoint) and resumed to the same numbers.
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createEngine, type FloatArray, type MetaBatch, type NativeEngine } from '../native/engine.js';
import { writeFileAtomic } from '../io/atomicFile.js';
import { adamStep, clipElementwise, createAdamState } from './adam.js';
import { loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { engineOptionsOf, formatConfig, type TrainConfig } from './config.js';
import { attachCache, imageTaskSource, openImageDataset, SinusoidTaskSource, type ImageDataset, type TaskSource } from './taskSources.js';
import { MetricsLog, type IterationMetrics, type ValidationMetrics } from './metricsLog.js';
import { renderLearningCurve } from '../report/learningCurve.js';
import type { SinusoidState } from '../data/sinusoid.js';

export const CHECKPOINT_FILE = 'checkpoint.safetensors';
/** Query accuracy before adaptation is measured on every N-th meta-batch only: it is a
 *  full extra forward pass of the query set (a fifth of a miniimagenet iteration) and
 *  sits at chance for label-permuted tasks, so sampling it loses nothing. */
export const MEASURE_BEFORE_EVERY = 10;

export interface TrainEvents {
  onStart?(info: { config: TrainConfig; startIteration: number; summary: string; split?: string; device: string }): void;
  onIteration?(m: IterationMetrics, config: TrainConfig): void;
  onValidation?(m: ValidationMetrics): void;
  onCheckpoint?(file: string, iteration: number): void;
}

export interface TrainOptions {
  resume?: boolean;
  events?: TrainEvents;
  /** Checked after each iteration: when it returns true, a checkpoint is written and training stops. */
  shouldStop?: () => boolean;
}

export interface TrainResult {
  runDir: string;
  checkpoint: string;
  iteration: number;
  stoppedEarly: boolean;
  secondsPerIteration: number;
  dataFraction: number;
  lastValidation?: ValidationMetrics;
}

export interface TrainingContext {
  engine: NativeEngine;
  dataset?: ImageDataset;
  source(which: 'train' | 'val' | 'test', seed: number, state?: unknown, queries?: number): TaskSource;
}

/** The engine and task sources of a configuration (shared by train and eval). */
export function trainingContext(config: TrainConfig): TrainingContext {
  const engine = createEngine(engineOptionsOf(config));
  if (config.dataset === 'sinusoid') {
    return {
      engine,
      source: (_which, seed, state, queries) => new SinusoidTaskSource(seed, config.shots, queries ?? config.queries, state as SinusoidState | undefined),
    };
  }
  const dataset = openImageDataset(config.dataset, config.data, config.split);
  attachCache(engine, dataset);
  return {
    engine,
    dataset,
    source: (which, seed, state, queries) =>
      imageTaskSource(dataset, which, { ways: config.ways, shots: config.shots, queries: queries ?? config.queries, seed, reduction: config.lossReduction }, state),
  };
}

function checkFinite(values: ArrayLike<number>, what: string, iteration: number, checkpoint: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      throw new Error(`iteration ${iteration}: the ${what} is not finite (${values[i]} at element ${i}); training stopped. ` +
        `The last good checkpoint is ${checkpoint}. Try a smaller --inner-lr or --meta-lr, or --first-order.`);
    }
  }
}

function mean(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i];
  return sum / values.length;
}

export async function validate(context: TrainingContext, parameters: FloatArray, config: TrainConfig, iteration: number): Promise<ValidationMetrics> {
  const source = context.source('val', config.seed + 1000);
  const steps = config.innerSteps;
  let accuracy = 0, loss = 0, done = 0;
  while (done < config.validationTasks) {
    const tasks = Math.min(config.metaBatch, config.validationTasks - done);
    const r = await context.engine.adaptAndEvaluate(parameters, source.next(tasks), { steps, stepSizes: config.innerLr });
    for (let t = 0; t < tasks; t++) {
      accuracy += r.queryAccuracy[t * (steps + 1) + steps];
      loss += r.queryLoss[t * (steps + 1) + steps];
    }
    done += tasks;
  }
  return { iteration, tasks: done, steps, accuracy: accuracy / done, loss: loss / done };
}

export async function train(config: TrainConfig, options: TrainOptions = {}): Promise<TrainResult> {
  const runDir = path.resolve(config.out);
  const checkpointFile = path.join(runDir, CHECKPOINT_FILE);
  if (existsSync(checkpointFile) && !options.resume) {
    throw new Error(`${runDir} already holds a run (${CHECKPOINT_FILE}); pass --resume to continue it, or choose another --out`);
  }
  if (options.resume && !existsSync(checkpointFile)) {
    throw new Error(`--resume: no checkpoint in ${runDir} (looked for ${checkpointFile})`);
  }
  mkdirSync(runDir, { recursive: true });
  const context = trainingContext(config);
  const { engine } = context;
  const table = engine.parameters();

  let parameters: FloatArray = engine.initialize(config.seed);
  let adam = createAdamState(parameters.length);
  let startIteration = 0;
  let samplerState: unknown;
  if (options.resume) {
    const saved = loadCheckpoint<TrainConfig>(checkpointFile, table, 'float32');
    parameters = saved.parameters;
    adam = saved.adam;
    startIteration = saved.iteration;
    samplerState = saved.samplerState;
  }
  const source = context.source('train', config.seed, samplerState);
  const metrics = new MetricsLog(runDir, startIteration);
  writeFileAtomic(path.join(runDir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  if (context.dataset) writeFileAtomic(path.join(runDir, 'split.json'), `${JSON.stringify(context.dataset.split, null, 2)}\n`);
  options.events?.onStart?.({
    config, startIteration, summary: formatConfig(config), device: engine.device,
    split: context.dataset ? `${context.dataset.split.protocol} split: ${context.dataset.split.train.length} train / ${context.dataset.split.val.length} val / ${context.dataset.split.test.length} test classes, sha256 ${context.dataset.split.hash.slice(0, 16)}` : undefined,
  });

  const save = (iteration: number) => {
    saveCheckpoint(checkpointFile, table, { config, iteration, parameters, adam, samplerState: source.getState() });
    options.events?.onCheckpoint?.(checkpointFile, iteration);
  };

  let iteration = startIteration;
  let stoppedEarly = false;
  let totalSeconds = 0, dataSeconds = 0, measured = 0;
  let lastValidation: ValidationMetrics | undefined;
  const loop = { steps: config.innerSteps, stepSizes: config.innerLr, order: config.order };
  while (iteration < config.iterations) {
    const started = process.hrtime.bigint();
    const batch: MetaBatch = source.next(config.metaBatch);
    const sampled = process.hrtime.bigint();
    const measureBefore = iteration % MEASURE_BEFORE_EVERY === 0;
    const result = await engine.metaGradient(parameters, batch, { ...loop, measureBefore });
    checkFinite(result.queryLossAfter, 'query loss', iteration + 1, checkpointFile);
    checkFinite(result.gradient, 'meta-gradient', iteration + 1, checkpointFile);
    const gradient = config.gradientClip ? clipElementwise(result.gradient, config.gradientClip) : result.gradient;
    adamStep(parameters, gradient, adam, { learningRate: config.metaLr });
    iteration += 1;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const data = Number(sampled - started) / 1e9;
    totalSeconds += seconds;
    dataSeconds += data;
    measured += 1;
    const row: IterationMetrics = {
      iteration, seconds, dataSeconds: data, metaLoss: mean(result.queryLossAfter),
      supportLossBefore: mean(result.supportLossBefore), queryAccuracyBefore: measureBefore ? mean(result.queryAccuracyBefore) : NaN,
      queryAccuracyAfter: mean(result.queryAccuracyAfter), supportAccuracyAfter: mean(result.supportAccuracyAfter),
    };
    metrics.iteration(row);
    options.events?.onIteration?.(row, config);
    const stopping = options.shouldStop?.() ?? false;
    if (iteration % config.validateEvery === 0 || iteration === config.iterations) {
      lastValidation = await validate(context, parameters, config, iteration);
      metrics.validation(lastValidation);
      options.events?.onValidation?.(lastValidation);
      // keep the picture current during long runs, not only at the end
      await renderLearningCurve(runDir, metrics.allIterations(), metrics.allValidations(), `${config.preset}, order ${config.order}`);
    }
    if (iteration % config.checkpointEvery === 0 || iteration === config.iterations || stopping) save(iteration);
    if (stopping) {
      stoppedEarly = iteration < config.iterations;
      break;
    }
  }
  if (iteration === startIteration) save(iteration);
  metrics.close();
  await renderLearningCurve(runDir, metrics.allIterations(), metrics.allValidations(), `${config.preset}, order ${config.order}`);
  return {
    runDir, checkpoint: checkpointFile, iteration, stoppedEarly,
    secondsPerIteration: measured ? totalSeconds / measured : 0,
    dataFraction: totalSeconds ? dataSeconds / totalSeconds : 0,
    lastValidation,
  };
}
