// The settings the bench measures: the paper's six (from src/train/presets.ts) and a tiny
// one for tests and smoke checks, plus the reference figures printed beside ours.
import { PRESETS } from '../train/presets.js';
import type { ArchitectureName } from '../native/engine.js';

export interface BenchSetting {
  name: string;
  arch: ArchitectureName;
  ways: number;
  shots: number;
  queries: number;      // per class
  metaBatch: number;    // tasks per meta-iteration
  innerSteps: number;
  innerLr: number;
  imageSize?: number;   // default: the paper's
  filters?: number;     // default: the paper's
}

export const PAPER_SETTING_NAMES = [
  'omniglot-5w1s', 'omniglot-5w5s', 'omniglot-20w1s', 'omniglot-20w5s', 'miniimagenet-5w1s', 'miniimagenet-5w5s',
] as const;

function fromPreset(name: string): BenchSetting {
  const p = PRESETS[name];
  return {
    name, arch: p.dataset as ArchitectureName, ways: p.ways, shots: p.shots, queries: p.queries,
    metaBatch: p.metaBatch, innerSteps: p.innerSteps, innerLr: p.innerLr,
  };
}

/** omniglot-like, 8x8 images and 4 filters: a meta-iteration takes well under a millisecond */
export const TINY_SETTINGS: BenchSetting[] = [
  { name: 'tiny-omniglot', arch: 'omniglot', ways: 5, shots: 1, queries: 1, metaBatch: 2, innerSteps: 1, innerLr: 0.4, imageSize: 8, filters: 4 },
];

export const BENCH_SETTINGS: BenchSetting[] = [...PAPER_SETTING_NAMES.map(fromPreset), ...TINY_SETTINGS];

/** The inner-step sweep's settings (the issue: MiniImagenet 5w1s and Omniglot 20w1s). */
export const SWEEP_SETTING_NAMES = ['miniimagenet-5w1s', 'omniglot-20w1s'];

export function findSetting(name: string): BenchSetting {
  const s = BENCH_SETTINGS.find((x) => x.name === name);
  if (!s) throw new Error(`unknown bench setting '${name}': expected all or one of ${BENCH_SETTINGS.map((x) => x.name).join(', ')}`);
  return s;
}

export const imagesPerIteration = (s: BenchSetting): number => s.metaBatch * s.ways * (s.shots + s.queries);

/** A PyTorch 1.13 CPU implementation of the same computation on a 2-core machine. */
export const REFERENCE = {
  source: 'PyTorch 1.13 CPU implementation of the same computation, 2-core machine (figures given in the issue)',
  /** seconds per meta-iteration, [second order, first order] */
  seconds: {
    'omniglot-5w1s': { 2: 0.9, 1: 0.36 },
    'omniglot-20w1s': { 2: 4.2, 1: 1.2 },
    'miniimagenet-5w1s': { 2: 3.8, 1: 2.5 },
    'miniimagenet-5w5s': { 2: 5.8, 1: 2.6 },
  } as Record<string, Record<1 | 2, number>>,
  /** peak memory (MiB) against inner steps, miniimagenet-5w1s */
  sweepMemoryMiB: {
    'miniimagenet-5w1s': { 2: { 1: 750, 5: 930, 10: 1080, 20: 1530 }, 1: { 1: 740, 5: 740, 10: 740, 20: 740 } },
  } as Record<string, Record<1 | 2, Record<number, number>>>,
};
