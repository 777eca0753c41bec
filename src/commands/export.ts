// `maml-native export`: adapt the meta-learned network to the user's own labelled images
// (one folder per class) with the checkpoint's inner-loop settings, and write it as ONNX.
// Nothing is written unless every step succeeded.
import path from 'node:path';
import { createEngine, type FloatArray, type NativeEngine } from '../native/engine.js';
import { loadCheckpoint, readCheckpointConfig } from '../train/checkpoint.js';
import { engineOptionsOf, type TrainConfig } from '../train/config.js';
import { resolveCheckpointFile } from '../eval/evaluate.js';
import { lossWeight } from '../model/lossReduction.js';
import { buildOnnxModel, type BatchNormExport } from '../onnx/graph.js';
import { exportMetadata } from '../onnx/predict.js';
import { loadSupportFolder, type Preprocessing } from '../onnx/supportFolder.js';
import { writeFileAtomic } from '../io/atomicFile.js';

export interface ExportOptions {
  checkpoint: string;
  support?: string;       // folder with one sub-folder of images per class
  steps?: number;         // default: the run's test inner steps
  out: string;
  batchNorm?: BatchNormExport;
  adapt?: boolean;        // false: export the meta-learned initialisation itself
  classNames?: string[];  // for --no-adapt without a support folder
}

export function preprocessingOf(config: TrainConfig): Preprocessing {
  if (config.dataset === 'omniglot') return { channels: 1, height: 28, width: 28, invert: true };
  if (config.dataset === 'miniimagenet') return { channels: 3, height: 84, width: 84, invert: false };
  throw new Error(`export handles image classifiers (omniglot, miniimagenet); this checkpoint is ${config.dataset}`);
}

export interface AdaptedNetwork {
  engine: NativeEngine;
  config: TrainConfig;
  checkpoint: string;
  weights: FloatArray;
  statistics?: ReturnType<NativeEngine['forward']>['batchNorm'];
}

/** Adapts on a support batch (float images) and returns the weights and their support-set BN statistics. */
export async function adaptOnImages(engine: NativeEngine, config: TrainConfig, parameters: FloatArray, images: Float32Array, labels: Int32Array, steps: number): Promise<{ weights: FloatArray; statistics: ReturnType<NativeEngine['forward']>['batchNorm'] }> {
  const size = labels.length;
  const set = { images, labels, size, lossWeight: lossWeight(config.lossReduction, size, size / config.ways) };
  const adapted = await engine.adaptAndEvaluate(parameters, { tasks: 1, support: set, query: set }, { steps, stepSizes: config.innerLr }, { keepAdapted: true });
  const weights = adapted.adapted!;
  return { weights, statistics: engine.forward(weights, { images, size, lossWeight: 1 }).batchNorm };
}

export function onnxBytes(engine: NativeEngine, config: TrainConfig, weights: FloatArray, batchNorm: BatchNormExport, statistics: ReturnType<NativeEngine['forward']>['batchNorm'] | undefined, metadata: Record<string, string>): Uint8Array {
  const layers = engine.layers();
  return buildOnnxModel({
    layers, parameters: engine.parameters(), weights, batchNorm, supportStatistics: statistics,
    epsilon: config.batchNormEpsilon, inputShape: layers[0].in, outputs: config.ways, metadata,
  });
}

export async function exportModel(o: ExportOptions): Promise<{ out: string; classNames: string[]; supportImages: number; batchNorm: BatchNormExport; steps: number }> {
  const file = resolveCheckpointFile(o.checkpoint);
  const { config } = readCheckpointConfig<TrainConfig>(file);
  const preprocessing = preprocessingOf(config);
  const engine = createEngine(engineOptionsOf(config));
  const { parameters } = loadCheckpoint<TrainConfig>(file, engine.parameters(), 'float32');
  const adapt = o.adapt ?? true;
  const batchNorm = o.batchNorm ?? 'support';
  const steps = adapt ? o.steps ?? config.testInnerSteps : 0;
  let classNames = o.classNames ?? Array.from({ length: config.ways }, (_, i) => `class${i}`);
  let weights: FloatArray = parameters;
  let statistics;
  let supportImages = 0;
  if (o.support) {
    const support = await loadSupportFolder(path.resolve(o.support), preprocessing);
    if (support.classNames.length !== config.ways) {
      throw new Error(`${o.support} has ${support.classNames.length} class folders (${support.classNames.join(', ')}), but the checkpoint's network has ${config.ways} outputs (${config.ways}-way): give exactly ${config.ways} classes`);
    }
    classNames = support.classNames;
    supportImages = support.labels.length;
    const r = await adaptOnImages(engine, config, parameters, support.images, support.labels, steps);
    weights = r.weights;
    statistics = r.statistics;
  } else if (adapt) {
    throw new Error('--support DIR is required to adapt (one sub-folder of images per class); use --no-adapt to export the meta-learned initialisation');
  } else if (batchNorm === 'support') {
    throw new Error('--bn support freezes the statistics of a support set: give --support DIR, or use --bn batch with --no-adapt');
  }
  const bytes = onnxBytes(engine, config, weights, batchNorm, statistics, exportMetadata({
    classNames, preprocessing, dataset: config.dataset, steps, batchNorm, checkpoint: file, architecture: config.arch,
    extra: { 'maml.inner_lr': String(config.innerLr), 'maml.adapted': String(adapt), 'maml.support_images': String(supportImages) },
  }));
  writeFileAtomic(o.out, bytes);
  return { out: o.out, classNames, supportImages, batchNorm, steps };
}
