// Runs exported models with onnxruntime-node. Asking for CUDA tries the CUDA execution
// provider and, when it cannot be created (onnxruntime-node throws rather than falling
// back, e.g. when its CUDA libraries were never installed), says so in one line on stderr
// and uses the bundled CPU provider. Custom metadata (metadata_props) is not exposed by
// onnxruntime-node, so it is read from the ModelProto bytes with the protobufjs schema.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME } from './graph.js';
import { decodeModel } from './schema.js';

export type OnnxProvider = 'cpu' | 'cuda';

export interface OnnxSession {
  session: ort.InferenceSession;
  /** the provider actually in use */
  provider: OnnxProvider;
  /** metadata_props of the model */
  metadata: Record<string, string>;
  /** where the model came from (a path, or '<bytes>') */
  source: string;
}

export interface SessionOptions {
  provider: OnnxProvider;
  /** intra-op threads (default: onnxruntime's choice) */
  threads?: number;
  /** called instead of writing the fallback notice to stderr */
  notice?: (line: string) => void;
}

async function modelBytes(model: Uint8Array | string): Promise<Uint8Array> {
  if (typeof model !== 'string') return model;
  try {
    return new Uint8Array(await readFile(model));
  } catch (error) {
    throw new Error(`cannot read the ONNX model ${model}: ${(error as Error).message}`);
  }
}

/** Reads metadata_props from model bytes (or a file, or an open session) as a plain record. */
export async function readMetadata(model: OnnxSession | Uint8Array | string): Promise<Record<string, string>> {
  if (typeof model === 'object' && 'session' in model) return { ...model.metadata };
  return metadataOf(await modelBytes(model));
}

function metadataOf(bytes: Uint8Array): Record<string, string> {
  const decoded = decodeModel(bytes);
  const out: Record<string, string> = {};
  for (const entry of decoded.metadataProps ?? []) out[entry.key ?? ''] = entry.value ?? '';
  return out;
}

/**
 * Why the CUDA provider cannot load, when that is plain from the files: onnxruntime-node
 * keeps its CUDA provider libraries next to its binding, and its postinstall (skipped
 * here) is what downloads them. Checking first avoids onnxruntime's own multi-line error
 * log, which it writes to stderr before throwing. undefined: worth trying.
 */
function cudaUnavailable(): string | undefined {
  if (process.platform !== 'linux' && process.platform !== 'win32') return `onnxruntime-node has no CUDA provider on ${process.platform}`;
  let dir: string;
  try {
    const main = createRequire(import.meta.url).resolve('onnxruntime-node');
    dir = path.join(path.dirname(main), '..', 'bin', 'napi-v6', process.platform, process.arch);
  } catch {
    return undefined;
  }
  const library = process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so';
  if (existsSync(dir) && !existsSync(path.join(dir, library))) {
    return `${library} is not installed in ${dir}; onnxruntime-node's install script downloads it (run \`ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node\` where that download is allowed)`;
  }
  return undefined;
}

export async function createSession(model: Uint8Array | string, options: SessionOptions): Promise<OnnxSession> {
  if (options.provider !== 'cpu' && options.provider !== 'cuda') {
    throw new Error(`provider must be 'cpu' or 'cuda', got ${JSON.stringify(options.provider)}`);
  }
  const bytes = await modelBytes(model);
  const source = typeof model === 'string' ? model : '<bytes>';
  const metadata = metadataOf(bytes);
  const base: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all' };
  if (options.threads) base.intraOpNumThreads = options.threads;
  const notice = options.notice ?? ((text: string) => process.stderr.write(text + '\n'));
  const missing = options.provider === 'cuda' ? cudaUnavailable() : undefined;
  if (missing) notice(`onnxruntime: the CUDA execution provider is not available (${missing}); using the CPU provider`);
  if (options.provider === 'cuda' && !missing) {
    // onnxruntime's own (multi-line, coloured) error log would repeat the reason: quiet it for this attempt
    const level = ort.env.logLevel;
    ort.env.logLevel = 'fatal';
    try {
      const session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ['cuda'], logSeverityLevel: 4 });
      return { session, provider: 'cuda', metadata, source };
    } catch (error) {
      const reason = String((error as Error).message ?? error).split('\n')[0];
      const line = `onnxruntime: the CUDA execution provider is not available (${reason}); using the CPU provider`;
      notice(line);
    } finally {
      ort.env.logLevel = level;
    }
  }
  try {
    const session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ['cpu'] });
    return { session, provider: 'cpu', metadata, source };
  } catch (error) {
    throw new Error(`onnxruntime could not load the model ${source}: ${(error as Error).message}`);
  }
}

export interface RunResult {
  logits: Float32Array;
  probabilities: Float32Array;
}

/** Runs n images [n, C, H, W] (already scaled) and returns logits and probabilities, each [n, outputs]. */
export async function run(session: OnnxSession, images: Float32Array, n: number, shape: [number, number, number]): Promise<RunResult> {
  const expected = n * shape[0] * shape[1] * shape[2];
  if (images.length !== expected) {
    throw new Error(`${images.length} input values for ${n} images of [${shape.join(', ')}] (${expected} expected)`);
  }
  // onnxruntime-node reads the whole underlying buffer of a view: give it its own copy
  const data = images.byteOffset === 0 && images.buffer.byteLength === images.byteLength ? images : images.slice();
  const feeds = { [INPUT_NAME]: new ort.Tensor('float32', data, [n, ...shape]) };
  const results = await session.session.run(feeds);
  const logits = results[LOGITS_NAME];
  if (!logits) throw new Error(`the model ${session.source} has no '${LOGITS_NAME}' output (outputs: ${session.session.outputNames.join(', ')})`);
  const probabilities = results[PROBABILITIES_NAME];
  return {
    logits: logits.data as Float32Array,
    probabilities: probabilities ? (probabilities.data as Float32Array) : softmaxRows(logits.data as Float32Array, n),
  };
}

export async function runLogits(session: OnnxSession, images: Float32Array, n: number, shape: [number, number, number]): Promise<Float32Array> {
  return (await run(session, images, n, shape)).logits;
}

function softmaxRows(logits: Float32Array, n: number): Float32Array {
  const k = logits.length / n;
  const out = new Float32Array(logits.length);
  for (let r = 0; r < n; ++r) {
    let max = -Infinity;
    for (let j = 0; j < k; ++j) max = Math.max(max, logits[r * k + j]);
    let sum = 0;
    for (let j = 0; j < k; ++j) sum += (out[r * k + j] = Math.exp(logits[r * k + j] - max));
    for (let j = 0; j < k; ++j) out[r * k + j] /= sum;
  }
  return out;
}

/** Releases the native session. */
export async function closeSession(session: OnnxSession): Promise<void> {
  await session.session.release();
}
