// The effective training configuration: a preset, then every flag the user gave on top.
// It is printed at the start and saved with the run, so a run says how it was made.
import path from 'node:path';
import type { ArchitectureName, EngineOptions, PaddingMode } from '../native/engine.js';
import { findPreset, presetName, type DatasetName, type Preset } from './presets.js';

export interface TrainConfig extends Preset {
  preset: string;
  arch: ArchitectureName;
  order: 1 | 2;
  seed: number;
  data: string;                 // folder holding the prepared caches
  out: string;                  // run folder
  checkpointEvery: number;
  validateEvery: number;
  validationTasks: number;
  split: 'paper' | 'background';  // omniglot only
  padding: PaddingMode;
  batchNormEpsilon: number;
  filters?: number;
  glorotHead: boolean;
  workspaceBytes?: number;
  device?: 'cpu' | 'cuda' | 'auto';
}

/** The data folder: --data, else $MAML_DATA, else ./data under the working directory. */
export function defaultDataDir(): string {
  return path.resolve(process.env.MAML_DATA ?? 'data');
}

export function architectureOf(dataset: DatasetName): ArchitectureName {
  return dataset === 'sinusoid' ? 'sinusoid' : dataset;
}

export function resolveTrainConfig(flags: Partial<TrainConfig> & { dataset: DatasetName; ways?: number; shots?: number }): TrainConfig {
  const ways = flags.ways ?? (flags.dataset === 'sinusoid' ? 1 : 5);
  const shots = flags.shots ?? (flags.dataset === 'sinusoid' ? 10 : 1);
  const preset = findPreset(flags.dataset, ways, shots) ?? {
    ...(findPreset(flags.dataset, flags.dataset === 'sinusoid' ? 1 : 5, flags.dataset === 'sinusoid' ? 10 : 1) as Preset),
    ways, shots, queries: flags.dataset === 'miniimagenet' ? 15 : shots, testQueries: flags.dataset === 'miniimagenet' ? 15 : shots,
  };
  const defined = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined)) as Partial<TrainConfig>;
  const config: TrainConfig = {
    ...preset,
    preset: findPreset(flags.dataset, ways, shots) ? presetName(flags.dataset, ways, shots) : `custom (${presetName(flags.dataset, ways, shots)} is not a paper setting)`,
    arch: architectureOf(flags.dataset),
    order: 2,
    seed: 1,
    data: defaultDataDir(),
    out: path.resolve('runs', `${presetName(flags.dataset, ways, shots)}-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`),
    checkpointEvery: 500,
    validateEvery: 500,
    validationTasks: 100,
    split: 'paper',
    padding: 'tf',
    batchNormEpsilon: 1e-3,
    glorotHead: false,
    ...defined,
    ways,
    shots,
  };
  validateTrainConfig(config);
  return config;
}

export function validateTrainConfig(c: TrainConfig): void {
  const positive: (keyof TrainConfig)[] = ['ways', 'shots', 'queries', 'metaBatch', 'iterations', 'checkpointEvery', 'validateEvery', 'testQueries'];
  for (const key of positive) {
    const v = c[key] as number;
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${kebab(key)} must be a whole number >= 1, got ${v}`);
  }
  if (!Number.isInteger(c.innerSteps) || c.innerSteps < 0) throw new Error(`--inner-steps must be a whole number >= 0, got ${c.innerSteps}`);
  if (!(c.innerLr >= 0)) throw new Error(`--inner-lr must be >= 0, got ${c.innerLr}`);
  if (!(c.metaLr > 0)) throw new Error(`--meta-lr must be > 0, got ${c.metaLr}`);
  if (c.order !== 1 && c.order !== 2) throw new Error(`order must be 1 or 2, got ${c.order}`);
}

function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (m) => `-${m.toLowerCase()}`);
}

export function engineOptionsOf(c: TrainConfig): EngineOptions {
  return {
    arch: c.arch, ways: c.ways, padding: c.padding, batchNormEpsilon: c.batchNormEpsilon, filters: c.filters,
    glorotHead: c.glorotHead, dtype: 'float32', workspaceBytes: c.workspaceBytes, device: c.device ?? 'auto',
  };
}

export function formatConfig(c: TrainConfig): string {
  const rows: [string, unknown][] = [
    ['preset', c.preset], ['dataset', `${c.dataset} (${c.dataset === 'omniglot' ? `split ${c.split}` : 'Ravi-Larochelle split'})`],
    ['ways / shots / queries', `${c.ways} / ${c.shots} / ${c.queries} per class`], ['meta-batch', c.metaBatch],
    ['inner steps (train / test)', `${c.innerSteps} / ${c.testInnerSteps}`], ['inner lr', `${c.innerLr} (${c.lossReduction})`],
    ['meta lr (Adam)', c.metaLr], ['order', c.order === 2 ? '2 (exact second order)' : '1 (first-order MAML)'],
    ['meta-gradient clip', c.gradientClip ?? 'none'], ['iterations', c.iterations], ['seed', c.seed],
    ['checkpoint / validate every', `${c.checkpointEvery} / ${c.validateEvery} iterations`], ['data', c.data], ['run folder', c.out],
  ];
  return rows.map(([k, v]) => `  ${k.padEnd(28)} ${String(v)}`).join('\n');
}
