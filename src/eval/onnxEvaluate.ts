// `eval --engine onnx`: adapt on each test task natively, export that task's adapted
// network as ONNX, and classify its query images with onnxruntime-node. With --bn batch
// the graph normalises with the query batch's statistics exactly as the native engine
// does, so the two tables agree task by task; with --bn support the difference is reported.
import type { MetaBatch } from '../native/engine.js';
import { loadCheckpoint, readCheckpointConfig } from '../train/checkpoint.js';
import { trainingContext } from '../train/trainer.js';
import { datasetPixels } from '../train/taskSources.js';
import type { TrainConfig } from '../train/config.js';
import { adaptOnImages, onnxBytes } from '../commands/export.js';
import { createSession, closeSession, runLogits, type OnnxProvider } from '../onnx/runtime.js';
import type { BatchNormExport } from '../onnx/graph.js';
import { summarize } from './statistics.js';
import { queriesFor, resolveCheckpointFile, type EvaluationResult } from './evaluate.js';

export interface OnnxEvaluateOptions {
  checkpoint: string;
  data?: string;
  tasks?: number;
  steps?: number;
  seed?: number;
  batchNorm: BatchNormExport;
  provider: OnnxProvider;
  testQueries?: 'standard' | 'paper' | number;
  onProgress?: (done: number, total: number) => void;
}

/** Pixels of examples gathered from the cache as the native side does (rotation, inversion, /255). */
export function gatherImages(pixels: Uint8Array, shape: [number, number, number], invert: boolean, indices: Int32Array, rotations?: Uint8Array): Float32Array {
  const [c, h, w] = shape;
  const size = c * h * w;
  const out = new Float32Array(indices.length * size);
  indices.forEach((index, e) => {
    const r = rotations ? rotations[e] : 0;
    for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      let sy = y, sx = x;
      for (let k = 0; k < r; k++) [sy, sx] = [sx, w - 1 - sy];
      // float32 arithmetic, as the native gather computes it
      const v = Math.fround(pixels[index * size + (ch * h + sy) * w + sx] / 255);
      out[e * size + (ch * h + y) * w + x] = invert ? Math.fround(1 - v) : v;
    }
  });
  return out;
}

export interface OnnxEvaluation {
  onnx: EvaluationResult['rows'][number];
  native: EvaluationResult['rows'][number];
  tasksIdentical: number;
  maxAccuracyDifference: number;
  tasks: number;
  steps: number;
  batchNorm: BatchNormExport;
  provider: OnnxProvider;
  testQueries: string;
}

export async function evaluateWithOnnx(o: OnnxEvaluateOptions): Promise<OnnxEvaluation> {
  const file = resolveCheckpointFile(o.checkpoint);
  const { config: stored } = readCheckpointConfig<TrainConfig>(file);
  const config: TrainConfig = { ...stored, data: o.data ?? stored.data };
  const context = trainingContext(config);
  if (!context.dataset) throw new Error('eval --engine onnx needs an image data set checkpoint');
  const { engine, dataset } = context;
  const { parameters } = loadCheckpoint<TrainConfig>(file, engine.parameters(), 'float32');
  const tasks = o.tasks ?? 600, steps = o.steps ?? config.testInnerSteps;
  const { queries, label } = queriesFor(config, o.testQueries);
  const source = context.source('test', o.seed ?? 0, undefined, queries);
  const shape = dataset.index.imageShape;
  const pixels = datasetPixels(dataset);  // ONNX inputs are gathered here, so the cache must be in memory
  const onnxAccuracy: number[] = [], nativeAccuracy: number[] = [];
  let identical = 0, maxDifference = 0, provider: OnnxProvider = o.provider;
  for (let t = 0; t < tasks; t++) {
    const batch: MetaBatch = source.next(1);
    const native = await engine.adaptAndEvaluate(parameters, batch, { steps, stepSizes: config.innerLr });
    const supportImages = gatherImages(pixels, shape, dataset.index.invert, batch.support.indices!, batch.support.rotations);
    const queryImages = gatherImages(pixels, shape, dataset.index.invert, batch.query.indices!, batch.query.rotations);
    const adapted = await adaptOnImages(engine, config, parameters, supportImages, batch.support.labels!, steps);
    const bytes = onnxBytes(engine, config, adapted.weights, o.batchNorm, adapted.statistics, {});
    const session = await createSession(bytes, { provider: o.provider, threads: 1, notice: t === 0 ? undefined : () => {} });
    provider = session.provider;
    const logits = await runLogits(session, queryImages, batch.query.size, shape);
    await closeSession(session);
    let correct = 0;
    const labels = batch.query.labels!;
    for (let i = 0; i < batch.query.size; i++) {
      let best = 0;
      for (let c = 1; c < config.ways; c++) if (logits[i * config.ways + c] > logits[i * config.ways + best]) best = c;
      if (best === labels[i]) correct++;
    }
    const a = correct / batch.query.size, b = native.queryAccuracy[steps];
    onnxAccuracy.push(a);
    nativeAccuracy.push(b);
    if (Math.abs(a - b) < 1e-6) identical++;
    maxDifference = Math.max(maxDifference, Math.abs(a - b));
    o.onProgress?.(t + 1, tasks);
  }
  return {
    onnx: { step: steps, ...summarize(onnxAccuracy) }, native: { step: steps, ...summarize(nativeAccuracy) },
    tasksIdentical: identical, maxAccuracyDifference: maxDifference, tasks, steps, batchNorm: o.batchNorm, provider, testQueries: label,
  };
}

export function formatOnnxEvaluation(r: OnnxEvaluation): string {
  const pct = (v: number) => (v * 100).toFixed(2);
  return [
    `${r.tasks} test tasks, ${r.steps} inner steps, query images: ${r.testQueries}, ONNX batch norm: ${r.batchNorm}, provider: ${r.provider}`,
    ` engine   accuracy (%)  ± 95% CI`,
    ` native   ${pct(r.native.mean).padStart(12)}  ± ${pct(r.native.ci95)}`,
    ` onnx     ${pct(r.onnx.mean).padStart(12)}  ± ${pct(r.onnx.ci95)}`,
    `tasks with identical accuracy: ${r.tasksIdentical} of ${r.tasks}; largest per-task difference ${pct(r.maxAccuracyDifference)} points`,
  ].join('\n');
}
