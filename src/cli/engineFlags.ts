// Flags that describe the network and its numerics, shared by gradient, train and bench.
import type { Argv } from 'yargs';
import type { ArchitectureName, EngineOptions, PaddingMode } from '../native/engine.js';

export function withEngineFlags<T>(y: Argv<T>) {
  return y
    .option('arch', { type: 'string', choices: ['omniglot', 'miniimagenet', 'mlp', 'sinusoid'], describe: 'network: the paper\'s conv4 for omniglot (1x28x28, 64 filters, stride-2 convs) or miniimagenet (3x84x84, 32 filters, max pool), the non-conv mlp (784-256-128-64-64), or the sinusoid regressor (1-40-40-1)' })
    .option('ways', { type: 'number', describe: 'classes per task N (the network has N outputs)' })
    .option('padding', { type: 'string', choices: ['tf', 'symmetric'], default: 'tf', describe: 'conv padding: tf = TensorFlow SAME as the original (28->14 pads 0 before, 1 after), symmetric = PyTorch padding=1' })
    .option('bn-eps', { type: 'number', default: 1e-3, describe: 'batch-norm epsilon (the original uses 1e-3)' })
    .option('bn-scale', { type: 'boolean', default: false, describe: 'give batch norm a learned scale gamma (the original has only an offset)' })
    .option('glorot-head', { type: 'boolean', default: false, describe: 'initialise the omniglot head with Glorot instead of the original\'s normal(0, 1)' })
    .option('filters', { type: 'number', describe: 'conv filters (default: 64 omniglot, 32 miniimagenet)' })
    .option('double', { type: 'boolean', default: false, describe: 'compute in float64 (slower; for checking against finite differences or another framework)' });
}

export interface EngineFlagValues {
  arch?: string;
  ways?: number;
  padding?: string;
  bnEps?: number;
  bnScale?: boolean;
  glorotHead?: boolean;
  filters?: number;
  double?: boolean;
}

export function engineOptionsFromFlags(a: EngineFlagValues, defaults: { arch: ArchitectureName; ways: number }): EngineOptions {
  return {
    arch: (a.arch ?? defaults.arch) as ArchitectureName,
    ways: a.ways ?? defaults.ways,
    padding: (a.padding ?? 'tf') as PaddingMode,
    batchNormEpsilon: a.bnEps ?? 1e-3,
    batchNormScale: a.bnScale ?? false,
    glorotHead: a.glorotHead ?? false,
    filters: a.filters,
    dtype: a.double ? 'float64' : 'float32',
  };
}
