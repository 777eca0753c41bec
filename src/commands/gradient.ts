// `maml-native gradient`: one meta-gradient from safetensors files, written as
// safetensors with the parameter names of the table. This is how a user checks the
// engine against another framework on the very same numbers.
import { createEngine, type EngineOptions, type ExampleSource, type FloatArray } from '../native/engine.js';
import { asFloat64, asInt32, readSafetensors, tensor, writeSafetensors, type NamedTensor } from '../io/safetensors.js';
import { lossWeight, type LossReduction } from '../model/lossReduction.js';
import { flattenParameters, unflattenParameters } from '../model/parameters.js';

export interface GradientOptions {
  engine: EngineOptions;
  params?: string;          // safetensors with the table's names; absent: seeded initialisation
  seed: number;
  task: string;             // safetensors with support.images/labels, query.images/labels
  order: 1 | 2;
  steps: number;
  innerLr: number;
  lossReduction: LossReduction;
  out: string;
}

export interface GradientSummary {
  out: string;
  tasks: number;
  queryLossAfter: number[];
  gradientNorm: number;
}

function readSet(tensors: Record<string, NamedTensor>, name: 'support' | 'query', file: string, imageShape: number[]) {
  const images = tensors[`${name}.images`];
  const labels = tensors[`${name}.labels`];
  if (!images || !labels) {
    throw new Error(`${file}: needs tensors '${name}.images' ([T,S,C,H,W] or [S,C,H,W]) and '${name}.labels' ([T,S] or [S]); found ${Object.keys(tensors).join(', ') || 'none'}`);
  }
  const shape = images.shape.length === 4 ? [1, ...images.shape] : images.shape;
  if (shape.length !== 5 || shape.slice(2).join('x') !== imageShape.join('x')) {
    throw new Error(`${file}: '${name}.images' has shape [${images.shape.join(', ')}]; expected [T, S, ${imageShape.join(', ')}] for this architecture`);
  }
  const [tasks, size] = shape;
  const labelValues = asInt32(labels, `${file}: '${name}.labels'`);
  if (labelValues.length !== tasks * size) {
    throw new Error(`${file}: '${name}.labels' holds ${labelValues.length} labels for ${tasks} x ${size} images`);
  }
  return { tasks, size, images: Float32Array.from(asFloat64(images, `${file}: '${name}.images'`)), labels: labelValues };
}

export async function computeGradient(o: GradientOptions): Promise<GradientSummary> {
  const engine = createEngine(o.engine);
  const table = engine.parameters();
  const first = engine.layers()[0];
  const params: FloatArray = o.params
    ? flattenParameters(table, readSafetensors(o.params).tensors, engine.dtype, o.params)
    : engine.initialize(o.seed);
  const { tensors } = readSafetensors(o.task);
  const support = readSet(tensors, 'support', o.task, first.in);
  const query = readSet(tensors, 'query', o.task, first.in);
  if (support.tasks !== query.tasks) throw new Error(`${o.task}: ${support.tasks} support tasks but ${query.tasks} query tasks`);
  const shots = support.size / o.engine.ways;
  if (o.lossReduction === 'sum-over-shots' && !Number.isInteger(shots)) {
    throw new Error(`--loss-reduction sum-over-shots needs the support size (${support.size}) to be a multiple of --ways (${o.engine.ways})`);
  }
  const set = (s: typeof support): ExampleSource => ({
    images: s.images, labels: s.labels, size: s.size, lossWeight: lossWeight(o.lossReduction, s.size, shots),
  });
  const result = await engine.metaGradient(params, { tasks: support.tasks, support: set(support), query: set(query) },
    { steps: o.steps, stepSizes: o.innerLr, order: o.order });
  const named = unflattenParameters(table, result.gradient);
  const out: Record<string, NamedTensor> = {};
  for (const [name, t] of Object.entries(named)) out[name] = tensor(t.data, t.shape);
  writeSafetensors(o.out, out, {
    order: String(o.order), steps: String(o.steps), inner_lr: String(o.innerLr), loss_reduction: o.lossReduction,
    arch: o.engine.arch, ways: String(o.engine.ways), dtype: engine.dtype, tasks: String(support.tasks),
  });
  let norm = 0;
  for (const g of result.gradient) norm += g * g;
  return { out: o.out, tasks: support.tasks, queryLossAfter: Array.from(result.queryLossAfter), gradientNorm: Math.sqrt(norm) };
}
