// The typed face of the native addon (native/addon/addon.cpp). Everything heavy happens in
// one async native call per meta-batch; this file only describes shapes and loads the binary.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export type ArchitectureName = 'omniglot' | 'miniimagenet' | 'mlp' | 'sinusoid';
export type PaddingMode = 'tf' | 'symmetric';
export type ScalarType = 'float32' | 'float64';
export type FloatArray = Float32Array | Float64Array;

export interface EngineOptions {
  arch: ArchitectureName;
  ways: number;
  padding?: PaddingMode;          // default 'tf' (the paper's)
  dtype?: ScalarType;             // default 'float32'
  batchNormEpsilon?: number;      // default 1e-3 (the original's)
  batchNormScale?: boolean;       // learned gamma; the original has none
  glorotHead?: boolean;           // omniglot head Glorot instead of normal(0, 1)
  filters?: number;               // default: the paper's (64 omniglot, 32 miniimagenet)
  imageSize?: number;             // default: the paper's (28, 84)
  channels?: number;              // default: the paper's (1, 3)
  hidden?: number[];              // mlp / sinusoid hidden widths (default: the paper's)
  workspaceBytes?: number;        // budget that sets how many tasks run at once (default 512e6)
  device?: 'cpu' | 'cuda' | 'auto'; // auto: CUDA when a device answers (builds with the CUDA backend), else CPU
}

export interface ParameterEntry {
  name: string;          // PyTorch style: conv1.weight, bn1.bias, head.weight
  shape: number[];
  offset: number;        // into the flat parameter vector
  size: number;
  adapted: boolean;      // updated by the inner loop (batch-norm parameters are not)
}

export type LayerKind = 'conv3x3' | 'batchnorm' | 'relu' | 'maxpool2' | 'spatialmean' | 'linear';

export interface LayerEntry {
  kind: LayerKind;
  in: [number, number, number];   // channels, height, width
  out: [number, number, number];
  stride: number;                 // conv
  padTop: number;                 // conv: zero rows before the image (TensorFlow SAME pads 0 before, 1 after for 28 -> 14)
  padLeft: number;
  hasScale: boolean;              // batch norm with a learned gamma
  weight: number;                 // offset of the weight tensor, -1 if none (batch norm: gamma)
  bias: number;                   // offset of the bias tensor, -1 if none (batch norm: beta)
}

/** Where the pixels of an example come from: float images, or indices into the image cache. */
export interface ExampleSource {
  /** [tasks * size * C * H * W] network inputs, already scaled. */
  images?: Float32Array | Float64Array;
  /** [tasks * size] indices into the cache given to setImageCache. */
  indices?: Int32Array;
  /** [tasks * size] quarter turns counter-clockwise (0..3), as tf.image.rot90; optional. */
  rotations?: Uint8Array;
  /** [tasks * size] class labels 0..ways-1 (classification). */
  labels?: Int32Array;
  /** [tasks * size * outputs] regression targets. */
  targets?: Float32Array | Float64Array;
  /** examples per task */
  size: number;
  /** w of MATH.md: 1/size for 'mean', 1/shots for 'sum-over-shots' */
  lossWeight: number;
}

export interface MetaBatch {
  tasks: number;
  support: ExampleSource;
  query: ExampleSource;
}

export interface InnerLoopOptions {
  steps: number;
  /** one number, or steps x tensors values (row per step, one per parameter tensor in table order) */
  stepSizes: number | Float64Array | number[];
  order?: 1 | 2;             // default 2 (exact second order)
  measureBefore?: boolean;   // query loss/accuracy before adaptation (default true)
}

export interface MetaGradientResult {
  gradient: FloatArray;               // [P], mean over tasks
  stepSizeGradient: Float64Array;     // [steps x tensors] (second order)
  supportLossBefore: Float64Array;    // per task
  supportAccuracyBefore: Float64Array;
  supportLossAfter: Float64Array;
  supportAccuracyAfter: Float64Array;
  queryLossBefore: Float64Array;
  queryAccuracyBefore: Float64Array;
  queryLossAfter: Float64Array;
  queryAccuracyAfter: Float64Array;
  taskGroup: number;                  // tasks run at once
  workspaceBytes: number;
}

export interface AdaptationResult {
  queryLoss: Float64Array;      // [tasks x (steps + 1)]
  queryAccuracy: Float64Array;  // [tasks x (steps + 1)]
  adapted?: FloatArray;         // [tasks x P] when keepAdapted
  logits?: FloatArray;          // [tasks x query x outputs] at theta_K when keepLogits
}

export interface BatchNormStatistics {
  layer: number;          // index into layers()
  mean: Float64Array;     // per channel
  variance: Float64Array; // biased, per channel
}

export interface ForwardResult {
  logits: FloatArray;                  // [examples x outputs]
  batchNorm: BatchNormStatistics[];    // the statistics of this batch, per batch-norm layer
}

export interface NativeEngine {
  readonly parameterCount: number;
  readonly dtype: ScalarType;
  /** the device the engine runs on after resolving 'auto' */
  readonly device: 'cpu' | 'cuda';
  parameters(): ParameterEntry[];
  layers(): LayerEntry[];
  /** Multiply-adds of one example's forward pass (conv and linear layers). */
  forwardMultiplyAdds(): number;
  initialize(seed: number): FloatArray;
  /** Keeps a reference to the pixels ([count, C, H, W] uint8); indices then select from them. */
  setImageCache(pixels: Uint8Array, count: number, channels: number, height: number, width: number, invert: boolean): void;
  /** The same cache left on disk: each call reads its images from the file by position (CPU engine only). */
  setImageCacheFile(file: string, count: number, channels: number, height: number, width: number, invert: boolean): void;
  metaGradient(parameters: FloatArray, batch: MetaBatch, loop: InnerLoopOptions): Promise<MetaGradientResult>;
  adaptAndEvaluate(parameters: FloatArray, batch: MetaBatch, loop: InnerLoopOptions,
                   options?: { keepAdapted?: boolean; keepLogits?: boolean }): Promise<AdaptationResult>;
  /** One task's logits and batch-norm statistics for [examples] inputs. */
  forward(parameters: FloatArray, inputs: ExampleSource & { size: number }): ForwardResult;
}

interface AddonModule {
  Engine: new (options: EngineOptions) => NativeEngine;
  threads(): number;
  cudaDevices(): { count: number; error?: string };
}

let cached: AddonModule | undefined;

/** Loads build/Release/maml_native.node, saying what to run when it is missing. */
export function loadAddon(): AddonModule {
  if (cached) return cached;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const candidates = [path.join(root, 'build', 'Release', 'maml_native.node'), path.join(root, 'build', 'maml_native.node')];
  const found = candidates.find((file) => existsSync(file));
  if (!found) {
    throw new Error(`the native addon is not built (looked for ${candidates.join(', ')}); run \`npm install\` or \`npm run build:native\` in ${root}`);
  }
  const require = createRequire(import.meta.url);
  cached = require(found) as AddonModule;
  return cached;
}

export function createEngine(options: EngineOptions): NativeEngine {
  return new (loadAddon().Engine)(options);
}
