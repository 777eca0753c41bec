// safetensors: an 8-byte little-endian header length, a JSON header of
// {name: {dtype, shape, data_offsets: [begin, end]}} (plus an optional "__metadata__" of
// strings), then the raw little-endian bytes. Small enough to write here; the tests
// check it against bytes laid out by hand as the format's description gives them.
import { readFileSync } from 'node:fs';
import { writeFileAtomic } from './atomicFile.js';

export type SafetensorsDtype = 'F32' | 'F64' | 'I32' | 'I64' | 'U8';
export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface NamedTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: TensorData;
}

const BYTES: Record<SafetensorsDtype, number> = { F32: 4, F64: 8, I32: 4, I64: 8, U8: 1 };

function dtypeOf(data: TensorData): SafetensorsDtype {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof BigInt64Array) return 'I64';
  return 'U8';
}

export function tensor(data: TensorData, shape: number[]): NamedTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new Error(`tensor shape [${shape.join(', ')}] holds ${count} values, but ${data.length} were given`);
  return { dtype: dtypeOf(data), shape, data };
}

export function encodeSafetensors(tensors: Record<string, NamedTensor>, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    const bytes = t.data.byteLength;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // pad the header with spaces so the data starts 8-byte aligned, as other writers do
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const name of names) {
    const d = tensors[name].data;
    Buffer.from(d.buffer, d.byteOffset, d.byteLength).copy(out, at);
    at += d.byteLength;
  }
  return out;
}

export interface SafetensorsFile {
  tensors: Record<string, NamedTensor>;
  metadata: Record<string, string>;
}

export function decodeSafetensors(bytes: Buffer, file = '<buffer>'): SafetensorsFile {
  const fail = (why: string) => new Error(`${file}: not a valid safetensors file: ${why}`);
  if (bytes.length < 8) throw fail(`only ${bytes.length} bytes`);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength <= 0 || 8 + headerLength > bytes.length) throw fail(`header length ${headerLength} does not fit the file of ${bytes.length} bytes`);
  let header: Record<string, any>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  } catch (e) {
    throw fail(`header is not JSON (${(e as Error).message})`);
  }
  const base = 8 + headerLength;
  const tensors: Record<string, NamedTensor> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets: offsets } = entry as { dtype: SafetensorsDtype; shape: number[]; data_offsets: [number, number] };
    if (!(dtype in BYTES)) throw fail(`tensor '${name}' has dtype ${dtype}; supported: ${Object.keys(BYTES).join(', ')}`);
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = offsets;
    if (end - begin !== count * BYTES[dtype] || base + end > bytes.length) {
      throw fail(`tensor '${name}' [${shape.join(', ')}] ${dtype} needs ${count * BYTES[dtype]} bytes at ${begin}..${end}`);
    }
    // copy, so the typed array is aligned whatever the header length
    const raw = Uint8Array.prototype.slice.call(bytes, base + begin, base + end) as Uint8Array;
    const buffer = raw.buffer;
    const data: TensorData =
      dtype === 'F32' ? new Float32Array(buffer) :
      dtype === 'F64' ? new Float64Array(buffer) :
      dtype === 'I32' ? new Int32Array(buffer) :
      dtype === 'I64' ? new BigInt64Array(buffer) : new Uint8Array(buffer);
    tensors[name] = { dtype, shape, data };
  }
  return { tensors, metadata: (header.__metadata__ ?? {}) as Record<string, string> };
}

export function readSafetensors(file: string): SafetensorsFile {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return decodeSafetensors(bytes, file);
}

export function writeSafetensors(file: string, tensors: Record<string, NamedTensor>, metadata: Record<string, string> = {}): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

/** A float tensor as float64 values, whatever its stored precision. */
export function asFloat64(t: NamedTensor, what: string): Float64Array {
  if (t.dtype === 'F32' || t.dtype === 'F64') return Float64Array.from(t.data as Float32Array | Float64Array);
  throw new Error(`${what}: expected a float tensor (F32 or F64), got ${t.dtype}`);
}

/** Labels as int32, from I32 or I64 tensors. */
export function asInt32(t: NamedTensor, what: string): Int32Array {
  if (t.dtype === 'I32') return t.data as Int32Array;
  if (t.dtype === 'I64') return Int32Array.from(t.data as BigInt64Array, (v) => Number(v));
  throw new Error(`${what}: expected integer labels (I32 or I64), got ${t.dtype}`);
}
