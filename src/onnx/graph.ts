// Builds an ONNX model (IR version 8, opset 17) of the network described by the native
// engine's layer table and a flat parameter vector: the adapted (or meta-learned) weights.
//
//   images [batch, C, H, W] float32 -> layers -> logits [batch, outputs] -> Softmax -> probabilities
//
// Layer by layer (the layer table's kinds):
//   conv3x3     Conv, kernel 3x3, strides [s, s], pads [top, left, bottom, right] where
//               bottom = (out - 1) * s + 3 - in - top (TensorFlow SAME pads 0 before, 1 after
//               for 28 -> 14); weight [out, in, 3, 3], bias [out].
//   batchnorm   batchNorm 'support': BatchNormalization with frozen statistics (the support
//               set's, after adaptation): y = gamma (x - mean) / sqrt(var + eps) + beta; each
//               image's prediction is then independent of the others in its batch.
//               batchNorm 'batch': the statistics of the batch being classified, in the graph,
//               exactly as at training time: mean = ReduceMean(x, axes [0, 2, 3]) (axes [0] for
//               2-D activations), var = ReduceMean((x - mean)^2) (biased), then
//               (x - mean) / Sqrt(var + eps) * gamma + beta.
//   relu        Relu
//   maxpool2    MaxPool 2x2, stride 2, no padding
//   spatialmean ReduceMean over axes [2, 3], keepdims 0 -> [batch, C]
//   linear      Flatten (axis 1) when the input is 4-D, then Gemm with transB = 1:
//               y = x W^T + b, W [out, in] (C, H, W order, as the native flatten).
// Gamma is ones when the layer has no learned scale. Initializers are float32 raw_data
// (little-endian), whatever the precision of the weights given.
import type { BatchNormStatistics, LayerEntry, ParameterEntry } from '../native/engine.js';
import { AttributeType, DataType, encodeModel, type Attribute, type Model, type Node, type Tensor, type ValueInfo } from './schema.js';

export type BatchNormExport = 'support' | 'batch';

export interface OnnxExportOptions {
  layers: LayerEntry[];
  parameters: ParameterEntry[];
  weights: Float32Array | Float64Array;
  batchNorm: BatchNormExport;
  /** per batch-norm layer (by layer index), required for batchNorm 'support' */
  supportStatistics?: BatchNormStatistics[];
  epsilon: number;
  inputShape: [number, number, number];
  outputs: number;
  /** written as metadata_props (class names, preprocessing, dataset, ...): string values */
  metadata: Record<string, string>;
  /** graph name (default 'maml-native') */
  name?: string;
  producerVersion?: string;
}

export const ONNX_IR_VERSION = 8;
export const ONNX_OPSET = 17;
export const INPUT_NAME = 'images';
export const LOGITS_NAME = 'logits';
export const PROBABILITIES_NAME = 'probabilities';

function little(values: Float32Array): Uint8Array {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < values.length; ++i) view.setFloat32(i * 4, values[i], true);
  return bytes;
}

function floatTensor(name: string, dims: number[], values: Float32Array): Tensor {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== values.length) throw new Error(`initializer ${name}: ${values.length} values for dims [${dims.join(', ')}]`);
  return { name, dims, dataType: DataType.FLOAT, rawData: little(values) };
}

const ints = (name: string, values: number[]): Attribute => ({ name, type: AttributeType.INTS, ints: values });
const int = (name: string, value: number): Attribute => ({ name, type: AttributeType.INT, i: value });
const float = (name: string, value: number): Attribute => ({ name, type: AttributeType.FLOAT, f: value });

function tensorInfo(name: string, dims: (number | string)[]): ValueInfo {
  return {
    name,
    type: {
      tensorType: {
        elemType: DataType.FLOAT,
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  };
}

function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Builds the model and returns its ModelProto bytes. Throws naming the layer when the tables disagree. */
export function buildOnnxModel(options: OnnxExportOptions): Uint8Array {
  const { layers, weights, batchNorm, epsilon, inputShape, outputs } = options;
  if (batchNorm !== 'support' && batchNorm !== 'batch') {
    throw new Error(`batchNorm must be 'support' or 'batch', got ${JSON.stringify(batchNorm)}`);
  }
  if (!(epsilon > 0)) throw new Error(`epsilon must be a positive number, got ${epsilon}`);
  if (!Array.isArray(inputShape) || inputShape.length !== 3 || !inputShape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`inputShape must be [C, H, W] of positive integers, got ${JSON.stringify(inputShape)}`);
  }
  if (!Number.isInteger(outputs) || outputs < 1) throw new Error(`outputs must be a positive integer, got ${outputs}`);
  if (layers.length === 0) throw new Error('the layer table is empty');

  const statistics = new Map<number, BatchNormStatistics>();
  for (const s of options.supportStatistics ?? []) statistics.set(s.layer, s);
  const byOffset = new Map<number, ParameterEntry>();
  for (const p of options.parameters) byOffset.set(p.offset, p);

  const nodes: Node[] = [];
  const initializers: Tensor[] = [];
  let counter = 0;
  const node = (opType: string, input: string[], attribute: Attribute[] = [], output?: string): string => {
    const out = output ?? `${opType.toLowerCase()}_${counter}`;
    nodes.push({ name: `${opType}_${counter++}`, opType, input, output: [out], attribute });
    return out;
  };
  const constant = (name: string, dims: number[], values: Float32Array): string => {
    initializers.push(floatTensor(name, dims, values));
    return name;
  };
  /** count float32 values of the weights at offset, checked against the parameter table when it has the entry */
  const slice = (layerIndex: number, what: string, offset: number, dims: number[]): Float32Array => {
    const count = size(dims);
    if (offset < 0 || offset + count > weights.length) {
      throw new Error(`layer ${layerIndex} (${layers[layerIndex].kind}): ${what} at offset ${offset} with ${count} values is outside the ${weights.length} weights`);
    }
    const entry = byOffset.get(offset);
    if (entry && entry.size !== count) {
      throw new Error(`layer ${layerIndex}: parameter ${entry.name} has ${entry.size} values, the layer table implies ${count} (dims [${dims.join(', ')}])`);
    }
    return Float32Array.from(weights.subarray(offset, offset + count));
  };
  const paramName = (offset: number, fallback: string): string => byOffset.get(offset)?.name ?? fallback;

  let current = INPUT_NAME;
  let rank = 4;
  let shape: number[] = [...inputShape];
  layers.forEach((layer, index) => {
    if (size(layer.in) !== size(shape)) {
      throw new Error(`layer ${index} (${layer.kind}) expects input [${layer.in.join(', ')}], the previous layer gives [${shape.join(', ')}]`);
    }
    switch (layer.kind) {
      case 'conv3x3': {
        const [inC, inH, inW] = layer.in;
        const [outC, outH, outW] = layer.out;
        if (rank !== 4) throw new Error(`layer ${index}: conv3x3 after a flattening layer`);
        const s = layer.stride;
        const padBottom = (outH - 1) * s + 3 - inH - layer.padTop;
        const padRight = (outW - 1) * s + 3 - inW - layer.padLeft;
        if (padBottom < 0 || padRight < 0 || layer.padTop < 0 || layer.padLeft < 0) {
          throw new Error(`layer ${index}: conv3x3 ${inH}x${inW} -> ${outH}x${outW} stride ${s} with pads top ${layer.padTop}, left ${layer.padLeft} needs negative bottom/right padding`);
        }
        const dims = [outC, inC, 3, 3];
        const w = constant(paramName(layer.weight, `layer${index}.weight`), dims, slice(index, 'weight', layer.weight, dims));
        const inputs = [current, w];
        if (layer.bias >= 0) inputs.push(constant(paramName(layer.bias, `layer${index}.bias`), [outC], slice(index, 'bias', layer.bias, [outC])));
        current = node('Conv', inputs, [
          ints('kernel_shape', [3, 3]),
          ints('strides', [s, s]),
          ints('pads', [layer.padTop, layer.padLeft, padBottom, padRight]),
          ints('dilations', [1, 1]),
          int('group', 1),
        ]);
        shape = [...layer.out];
        break;
      }
      case 'batchnorm': {
        const channels = layer.in[0];
        const gamma = layer.hasScale && layer.weight >= 0 ? slice(index, 'gamma', layer.weight, [channels]) : new Float32Array(channels).fill(1);
        const beta = layer.bias >= 0 ? slice(index, 'beta', layer.bias, [channels]) : new Float32Array(channels);
        const gammaName = layer.hasScale && layer.weight >= 0 ? paramName(layer.weight, `layer${index}.weight`) : `bn_layer${index}.ones`;
        const betaName = layer.bias >= 0 ? paramName(layer.bias, `layer${index}.bias`) : `bn_layer${index}.zeros`;
        if (batchNorm === 'support') {
          const stats = statistics.get(index);
          if (!stats) {
            throw new Error(`batchNorm 'support' needs the support set's statistics of layer ${index} (batch norm); supportStatistics has layers [${[...statistics.keys()].join(', ')}]`);
          }
          if (stats.mean.length !== channels || stats.variance.length !== channels) {
            throw new Error(`layer ${index}: support statistics have ${stats.mean.length} means and ${stats.variance.length} variances for ${channels} channels`);
          }
          current = node('BatchNormalization', [
            current,
            constant(gammaName, [channels], gamma),
            constant(betaName, [channels], beta),
            constant(`bn_layer${index}.support_mean`, [channels], Float32Array.from(stats.mean)),
            constant(`bn_layer${index}.support_variance`, [channels], Float32Array.from(stats.variance)),
          ], [float('epsilon', epsilon), float('momentum', 0.9)]);
        } else {
          const axes = rank === 4 ? [0, 2, 3] : [0];
          const broadcast = rank === 4 ? [1, channels, 1, 1] : [1, channels];
          const mean = node('ReduceMean', [current], [ints('axes', axes), int('keepdims', 1)]);
          const centred = node('Sub', [current, mean]);
          const squares = node('Mul', [centred, centred]);
          const variance = node('ReduceMean', [squares], [ints('axes', axes), int('keepdims', 1)]);
          const eps = constant(`bn_layer${index}.epsilon`, [], Float32Array.of(epsilon));
          const std = node('Sqrt', [node('Add', [variance, eps])]);
          const normalised = node('Div', [centred, std]);
          const scaled = node('Mul', [normalised, constant(gammaName, broadcast, gamma)]);
          current = node('Add', [scaled, constant(betaName, broadcast, beta)]);
        }
        break;
      }
      case 'relu':
        current = node('Relu', [current]);
        break;
      case 'maxpool2':
        if (rank !== 4) throw new Error(`layer ${index}: maxpool2 after a flattening layer`);
        current = node('MaxPool', [current], [ints('kernel_shape', [2, 2]), ints('strides', [2, 2]), ints('pads', [0, 0, 0, 0])]);
        shape = [...layer.out];
        break;
      case 'spatialmean':
        if (rank !== 4) throw new Error(`layer ${index}: spatialmean after a flattening layer`);
        current = node('ReduceMean', [current], [ints('axes', [2, 3]), int('keepdims', 0)]);
        rank = 2;
        shape = [...layer.out];
        break;
      case 'linear': {
        if (rank === 4) {
          current = node('Flatten', [current], [int('axis', 1)]);
          rank = 2;
        }
        const features = size(layer.in);
        const out = layer.out[0];
        const dims = [out, features];
        const w = constant(paramName(layer.weight, `layer${index}.weight`), dims, slice(index, 'weight', layer.weight, dims));
        const inputs = [current, w];
        if (layer.bias >= 0) inputs.push(constant(paramName(layer.bias, `layer${index}.bias`), [out], slice(index, 'bias', layer.bias, [out])));
        const last = index === layers.length - 1;
        current = node('Gemm', inputs, [int('transB', 1), float('alpha', 1), float('beta', 1)], last ? LOGITS_NAME : undefined);
        shape = [...layer.out];
        break;
      }
      default:
        throw new Error(`layer ${index}: unknown kind ${JSON.stringify((layer as LayerEntry).kind)}`);
    }
  });
  if (current !== LOGITS_NAME) throw new Error(`the last layer must be linear (the head), got ${layers[layers.length - 1].kind}`);
  if (size(shape) !== outputs) throw new Error(`the head gives ${size(shape)} outputs, outputs says ${outputs}`);
  node('Softmax', [LOGITS_NAME], [int('axis', 1)], PROBABILITIES_NAME);

  const model: Model = {
    irVersion: ONNX_IR_VERSION,
    opsetImport: [{ domain: '', version: ONNX_OPSET }],
    producerName: 'maml-native',
    producerVersion: options.producerVersion ?? '0.1.0',
    modelVersion: 1,
    docString: `MAML network, batch norm '${batchNorm}' (${batchNorm === 'support' ? 'frozen support-set statistics' : 'statistics of each input batch'})`,
    graph: {
      name: options.name ?? 'maml-native',
      node: nodes,
      initializer: initializers,
      input: [tensorInfo(INPUT_NAME, ['batch', ...inputShape])],
      output: [tensorInfo(LOGITS_NAME, ['batch', outputs]), tensorInfo(PROBABILITIES_NAME, ['batch', outputs])],
    },
    metadataProps: Object.entries(options.metadata).map(([key, value]) => {
      if (typeof value !== 'string') throw new Error(`metadata ${key} must be a string (JSON-encode objects), got ${typeof value}`);
      return { key, value };
    }),
  };
  return encodeModel(model);
}
