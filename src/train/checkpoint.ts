// Checkpoints as safetensors: parameters under their table names, Adam's moments as
// `adam.m.<name>` / `adam.v.<name>`, and everything else (configuration, iteration,
// sampler state, Adam's step) as JSON strings in the metadata, so any safetensors
// reader can open them. Written atomically: a crash mid-write leaves the previous one.
import type { FloatArray, ParameterEntry } from '../native/engine.js';
import { readSafetensors, tensor, writeSafetensors, type NamedTensor } from '../io/safetensors.js';
import type { AdamState } from './adam.js';

export const CHECKPOINT_FORMAT = 'maml-native-checkpoint-1';

export interface CheckpointContents<Config> {
  config: Config;
  iteration: number;
  parameters: FloatArray;
  adam: AdamState;
  samplerState: unknown;
  extra?: Record<string, unknown>;
}

export function saveCheckpoint<Config>(file: string, table: ParameterEntry[], c: CheckpointContents<Config>): void {
  const tensors: Record<string, NamedTensor> = {};
  for (const p of table) {
    const slice = <T extends FloatArray>(a: T) => a.slice(p.offset, p.offset + p.size) as T;
    tensors[p.name] = tensor(slice(c.parameters), p.shape);
    tensors[`adam.m.${p.name}`] = tensor(c.adam.m.slice(p.offset, p.offset + p.size), p.shape);
    tensors[`adam.v.${p.name}`] = tensor(c.adam.v.slice(p.offset, p.offset + p.size), p.shape);
  }
  writeSafetensors(file, tensors, {
    format: CHECKPOINT_FORMAT,
    config: JSON.stringify(c.config),
    iteration: String(c.iteration),
    adam_step: String(c.adam.step),
    sampler: JSON.stringify(c.samplerState),
    extra: JSON.stringify(c.extra ?? {}),
  });
}

export function loadCheckpoint<Config>(file: string, table: ParameterEntry[], dtype: 'float32' | 'float64'): CheckpointContents<Config> {
  const { tensors, metadata } = readSafetensors(file);
  if (metadata.format !== CHECKPOINT_FORMAT) {
    throw new Error(`${file} is not a maml-native checkpoint (metadata format '${metadata.format ?? 'none'}', expected '${CHECKPOINT_FORMAT}')`);
  }
  const total = table.reduce((n, p) => n + p.size, 0);
  const parameters = dtype === 'float64' ? new Float64Array(total) : new Float32Array(total);
  const m = new Float64Array(total), v = new Float64Array(total);
  for (const p of table) {
    for (const [name, target] of [[p.name, parameters], [`adam.m.${p.name}`, m], [`adam.v.${p.name}`, v]] as const) {
      const t = tensors[name];
      if (!t) throw new Error(`${file}: tensor '${name}' is missing; the checkpoint does not match this network (${table.length} tensors expected)`);
      if (t.shape.join('x') !== p.shape.join('x')) throw new Error(`${file}: '${name}' has shape [${t.shape.join(', ')}], the network needs [${p.shape.join(', ')}]`);
      target.set(t.data as Float32Array | Float64Array, p.offset);
    }
  }
  return {
    config: JSON.parse(metadata.config) as Config,
    iteration: Number(metadata.iteration),
    parameters,
    adam: { step: Number(metadata.adam_step), m, v },
    samplerState: JSON.parse(metadata.sampler),
    extra: JSON.parse(metadata.extra ?? '{}'),
  };
}

/** The configuration stored in a checkpoint, without building a network first. */
export function readCheckpointConfig<Config>(file: string): { config: Config; iteration: number } {
  const { metadata } = readSafetensors(file);
  if (metadata.format !== CHECKPOINT_FORMAT) {
    throw new Error(`${file} is not a maml-native checkpoint (metadata format '${metadata.format ?? 'none'}')`);
  }
  return { config: JSON.parse(metadata.config) as Config, iteration: Number(metadata.iteration) };
}
