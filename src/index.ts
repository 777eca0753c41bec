// The package's API: everything the CLI does is one of these functions.
export * from './native/engine.js';
export * from './io/safetensors.js';
export { writeFileAtomic } from './io/atomicFile.js';
export { lossWeight, type LossReduction } from './model/lossReduction.js';
export { flattenParameters, unflattenParameters } from './model/parameters.js';
export { computeGradient, type GradientOptions } from './commands/gradient.js';
// data
export { prepareOmniglot, decodeOmniglotImage } from './data/omniglotPrepare.js';
export { prepareMiniImagenet } from './data/miniImagenetPrepare.js';
export { loadImageCache, ImageCacheWriter, type CacheIndex } from './data/imageCache.js';
export { omniglotSplit, formatSplitManifest } from './data/omniglotSplits.js';
export { miniImagenetSplit } from './data/miniImagenetSplits.js';
export { EpisodeSampler, type EpisodeBatch } from './data/episodes.js';
export { SinusoidSampler } from './data/sinusoid.js';
export { loadLakeRuns } from './data/lakeRuns.js';
// training and evaluation
export { PRESETS, findPreset, type Preset } from './train/presets.js';
export { resolveTrainConfig, formatConfig, type TrainConfig } from './train/config.js';
export { train, validate, trainingContext, type TrainResult, type TrainOptions } from './train/trainer.js';
export { adamStep, createAdamState, type AdamState } from './train/adam.js';
export { saveCheckpoint, loadCheckpoint, readCheckpointConfig } from './train/checkpoint.js';
export { evaluate, formatEvaluation, type EvaluationResult } from './eval/evaluate.js';
export { summarize } from './eval/statistics.js';
export { evaluateLakeRuns, formatLakeRuns } from './eval/lakeRuns.js';
export { evaluateWithOnnx, formatOnnxEvaluation } from './eval/onnxEvaluate.js';
// ONNX
export { exportModel, type ExportOptions } from './commands/export.js';
export { buildOnnxModel } from './onnx/graph.js';
export { predict, formatPredictions } from './onnx/predict.js';
export { createSession, runLogits } from './onnx/runtime.js';
