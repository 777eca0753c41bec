// Where meta-batches come from: an image data set (indices into the native cache, sampled
// on the fly) or a generated regression family. The trainer and evaluator only see
// `next(tasks)`, and a state to save for an exact resume.
import path from 'node:path';
import type { MetaBatch, NativeEngine } from '../native/engine.js';
import { loadImageCache, openImageCache, type CacheIndex } from '../data/imageCache.js';
import { EpisodeSampler, type EpisodeBatch, type SamplerState } from '../data/episodes.js';
import { omniglotSplit } from '../data/omniglotSplits.js';
import { miniImagenetSplit } from '../data/miniImagenetSplits.js';
import { lossWeight, type LossReduction } from '../model/lossReduction.js';
import type { DatasetName } from './presets.js';
import { SinusoidSampler, type SinusoidState } from '../data/sinusoid.js';

export interface TaskSource {
  next(tasks: number): MetaBatch;
  getState(): unknown;
}

export interface SplitInfo {
  dataset: string;
  protocol: string;
  train: number[];
  val: number[];
  test: number[];
  hash: string;
  counts: Record<string, number>;
}

export interface ImageDataset {
  name: DatasetName;
  cacheDir: string;
  index: CacheIndex;
  /** In memory for small caches; large ones (full MiniImagenet: 1.27 GB) stay on disk. */
  pixels?: Buffer;
  pixelsFile: string;
  split: SplitInfo;
  rotate: boolean;
}

const PREPARE_HINT: Record<string, string> = {
  omniglot: 'npx maml-native prepare omniglot --src PATH_TO_OMNIGLOT --out DATA',
  miniimagenet: 'npx maml-native prepare miniimagenet --src PATH_TO_IMAGES --splits PATH_TO_CSVS --out DATA',
};

export function openImageDataset(name: 'omniglot' | 'miniimagenet', dataDir: string, protocol: 'paper' | 'background' = 'paper'): ImageDataset {
  const cacheDir = path.join(dataDir, name);
  let cache;
  try {
    cache = openImageCache(cacheDir, IN_MEMORY_BYTES);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n(no prepared ${name} cache in ${dataDir}: run \`${PREPARE_HINT[name].replace('DATA', dataDir)}\`, or point --data / MAML_DATA at the folder that holds it)`);
  }
  const split = name === 'omniglot' ? omniglotSplit(cache.index, protocol) : miniImagenetSplit(cache.index);
  return { name, cacheDir, index: cache.index, pixels: cache.pixels, pixelsFile: cache.pixelsFile, split, rotate: name === 'omniglot' };
}

/** Caches up to this size are read into memory (Omniglot: 25 MB); larger ones are read
 *  image by image from the page cache, so training memory does not grow with the set. */
export const IN_MEMORY_BYTES = 256 * 2 ** 20;

/** The pixels of a data set in memory, reading them from disk the first time if needed. */
export function datasetPixels(d: ImageDataset): Buffer {
  d.pixels ??= loadImageCache(d.cacheDir).pixels;
  return d.pixels;
}

export function attachCache(engine: NativeEngine, d: ImageDataset): void {
  const [c, h, w] = d.index.imageShape;
  // the CUDA engine uploads the whole cache to the device, so it needs it in memory once
  if (d.pixels || engine.device === 'cuda') engine.setImageCache(datasetPixels(d), d.index.count, c, h, w, d.index.invert);
  else engine.setImageCacheFile(d.pixelsFile, d.index.count, c, h, w, d.index.invert);
}

export function toMetaBatch(e: EpisodeBatch, reduction: LossReduction): MetaBatch {
  const supportSize = e.ways * e.shots, querySize = e.ways * e.queries;
  return {
    tasks: e.tasks,
    support: { ...e.support, size: supportSize, lossWeight: lossWeight(reduction, supportSize, e.shots) },
    query: { ...e.query, size: querySize, lossWeight: lossWeight(reduction, querySize, e.shots) },
  };
}

export class EpisodeTaskSource implements TaskSource {
  constructor(private readonly sampler: EpisodeSampler, private readonly reduction: LossReduction) {}
  next(tasks: number): MetaBatch {
    return toMetaBatch(this.sampler.sample(tasks), this.reduction);
  }
  getState(): SamplerState {
    return this.sampler.getState();
  }
}

export interface EpisodeShape {
  ways: number;
  shots: number;
  queries: number;
  seed: number;
  reduction: LossReduction;
}

export function imageTaskSource(d: ImageDataset, which: 'train' | 'val' | 'test', shape: EpisodeShape, state?: unknown): EpisodeTaskSource {
  const classes = d.split[which].map((i) => ({ first: d.index.classes[i].first, count: d.index.classes[i].count }));
  if (classes.length < shape.ways) {
    throw new Error(`the ${which} split of ${d.name} has ${classes.length} classes, fewer than the ${shape.ways} ways asked for`);
  }
  const options = { classes, ways: shape.ways, shots: shape.shots, queries: shape.queries, rotate: d.rotate, seed: shape.seed };
  const sampler = state ? EpisodeSampler.fromState(options, state as SamplerState) : new EpisodeSampler(options);
  return new EpisodeTaskSource(sampler, shape.reduction);
}

export class SinusoidTaskSource implements TaskSource {
  private readonly sampler: SinusoidSampler;
  constructor(seed: number, private readonly points: number, private readonly queryPoints: number, state?: SinusoidState) {
    this.sampler = new SinusoidSampler(seed, state);
  }
  next(tasks: number): MetaBatch {
    return this.sampler.sample(tasks, this.points, this.queryPoints).batch;
  }
  getState(): SinusoidState {
    return this.sampler.getState();
  }
}
