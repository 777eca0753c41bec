// The flat parameter vector and its named tensors (PyTorch names and layouts), both ways.
import type { FloatArray, ParameterEntry, ScalarType } from '../native/engine.js';
import type { NamedTensor } from '../io/safetensors.js';

export function unflattenParameters(table: ParameterEntry[], flat: FloatArray): Record<string, { data: FloatArray; shape: number[] }> {
  const out: Record<string, { data: FloatArray; shape: number[] }> = {};
  for (const p of table) out[p.name] = { data: flat.slice(p.offset, p.offset + p.size), shape: p.shape };
  return out;
}

export function flattenParameters(table: ParameterEntry[], tensors: Record<string, NamedTensor>, dtype: ScalarType, file: string): FloatArray {
  const total = table.reduce((n, p) => n + p.size, 0);
  const flat = dtype === 'float64' ? new Float64Array(total) : new Float32Array(total);
  const missing = table.filter((p) => !(p.name in tensors)).map((p) => p.name);
  if (missing.length > 0) {
    throw new Error(`${file}: missing parameters ${missing.join(', ')} (expected the names ${table.map((p) => p.name).join(', ')})`);
  }
  for (const p of table) {
    const t = tensors[p.name];
    if (t.shape.join('x') !== p.shape.join('x')) {
      throw new Error(`${file}: '${p.name}' has shape [${t.shape.join(', ')}], expected [${p.shape.join(', ')}]`);
    }
    if (t.dtype !== 'F32' && t.dtype !== 'F64') throw new Error(`${file}: '${p.name}' is ${t.dtype}; expected F32 or F64`);
    flat.set(t.data as Float32Array | Float64Array, p.offset);
  }
  return flat;
}
