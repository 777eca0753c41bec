// The package's API: everything the CLI does is one of these functions.
export * from './native/engine.js';
export * from './io/safetensors.js';
export { writeFileAtomic } from './io/atomicFile.js';
export { lossWeight, type LossReduction } from './model/lossReduction.js';
export { flattenParameters, unflattenParameters } from './model/parameters.js';
export { computeGradient, type GradientOptions } from './commands/gradient.js';
