// The original code's hyperparameters (Finn et al. 2017, github cbfinn/maml README and
// main.py flags), one preset per setting the paper reports.
import type { LossReduction } from '../model/lossReduction.js';

export type DatasetName = 'omniglot' | 'miniimagenet' | 'sinusoid';

export interface Preset {
  dataset: DatasetName;
  ways: number;
  shots: number;
  queries: number;        // per class at training
  testQueries: number;    // per class at evaluation ('standard')
  metaBatch: number;
  innerSteps: number;
  testInnerSteps: number;
  innerLr: number;
  metaLr: number;
  iterations: number;
  lossReduction: LossReduction;
  gradientClip?: number;  // meta-gradient clipped elementwise to [-c, c]
}

const omniglot = (ways: number, shots: number, metaBatch: number, innerSteps: number, innerLr: number): Preset => ({
  dataset: 'omniglot', ways, shots, queries: shots, testQueries: shots, metaBatch, innerSteps, testInnerSteps: 10,
  innerLr, metaLr: 1e-3, iterations: 60000, lossReduction: 'sum-over-shots',
});

const miniimagenet = (shots: number, metaBatch: number): Preset => ({
  dataset: 'miniimagenet', ways: 5, shots, queries: 15, testQueries: 15, metaBatch, innerSteps: 5, testInnerSteps: 10,
  innerLr: 0.01, metaLr: 1e-3, iterations: 60000, lossReduction: 'sum-over-shots', gradientClip: 10,
});

export const PRESETS: Record<string, Preset> = {
  'omniglot-5w1s': omniglot(5, 1, 32, 1, 0.4),
  'omniglot-5w5s': omniglot(5, 5, 32, 1, 0.4),
  'omniglot-20w1s': omniglot(20, 1, 16, 5, 0.1),
  'omniglot-20w5s': omniglot(20, 5, 16, 5, 0.1),
  'miniimagenet-5w1s': miniimagenet(1, 4),
  'miniimagenet-5w5s': miniimagenet(5, 2),
  'sinusoid-10shot': {
    dataset: 'sinusoid', ways: 1, shots: 10, queries: 10, testQueries: 10, metaBatch: 25, innerSteps: 1, testInnerSteps: 10,
    innerLr: 0.01, metaLr: 1e-3, iterations: 70000, lossReduction: 'mean',
  },
};

export function presetName(dataset: string, ways: number, shots: number): string {
  return dataset === 'sinusoid' ? 'sinusoid-10shot' : `${dataset}-${ways}w${shots}s`;
}

export function findPreset(dataset: string, ways: number, shots: number): Preset | undefined {
  return PRESETS[presetName(dataset, ways, shots)];
}
