// `predict`: classifies image files with an exported model. Everything needed to read the
// images (size, channels, inversion) and to name the classes comes from the model's own
// metadata, so a model file is all a user ships. The metadata keys are defined here, and
// `exportMetadata` builds them for the exporter, so both sides agree.
import { createSession, closeSession, run, readMetadata, type OnnxProvider } from './runtime.js';
import { loadImagesForPrediction, type Preprocessing } from './supportFolder.js';

export const METADATA_KEYS = {
  classNames: 'maml.class_names', // JSON array of strings, index = output
  preprocessing: 'maml.preprocessing', // JSON { size | height+width, channels, invert, scale: "1/255" }
  dataset: 'maml.dataset',
  steps: 'maml.adaptation_steps',
  batchNorm: 'maml.batch_norm', // 'support' | 'batch'
  checkpoint: 'maml.source_checkpoint',
  architecture: 'maml.architecture',
} as const;

export interface ExportMetadata {
  classNames: string[];
  preprocessing: Preprocessing;
  dataset?: string;
  steps?: number;
  batchNorm: 'support' | 'batch';
  checkpoint?: string;
  architecture?: string;
  /** anything else, written as is */
  extra?: Record<string, string>;
}

/** The metadata record buildOnnxModel writes, with the keys predict reads. */
export function exportMetadata(m: ExportMetadata): Record<string, string> {
  const out: Record<string, string> = {
    [METADATA_KEYS.classNames]: JSON.stringify(m.classNames),
    [METADATA_KEYS.preprocessing]: JSON.stringify({
      height: m.preprocessing.height,
      width: m.preprocessing.width,
      size: m.preprocessing.height === m.preprocessing.width ? m.preprocessing.height : undefined,
      channels: m.preprocessing.channels,
      invert: m.preprocessing.invert,
      scale: '1/255',
    }),
    [METADATA_KEYS.batchNorm]: m.batchNorm,
  };
  if (m.dataset !== undefined) out[METADATA_KEYS.dataset] = m.dataset;
  if (m.steps !== undefined) out[METADATA_KEYS.steps] = String(m.steps);
  if (m.checkpoint !== undefined) out[METADATA_KEYS.checkpoint] = m.checkpoint;
  if (m.architecture !== undefined) out[METADATA_KEYS.architecture] = m.architecture;
  return { ...m.extra, ...out };
}

/** Reads class names and preprocessing back from a model's metadata, saying which key is missing or bad. */
export function parseModelMetadata(metadata: Record<string, string>, source = 'the model'): { classNames: string[]; preprocessing: Preprocessing; batchNorm?: string } {
  const get = (key: string): unknown => {
    const text = metadata[key];
    if (text === undefined) throw new Error(`${source} has no '${key}' metadata: was it written by \`maml-native export\`? (keys: ${Object.keys(metadata).join(', ') || 'none'})`);
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`${source}: metadata '${key}' is not JSON: ${text.slice(0, 80)}`);
    }
  };
  const classNames = get(METADATA_KEYS.classNames);
  if (!Array.isArray(classNames) || !classNames.every((c) => typeof c === 'string')) {
    throw new Error(`${source}: metadata '${METADATA_KEYS.classNames}' must be a JSON array of strings`);
  }
  const p = get(METADATA_KEYS.preprocessing) as Record<string, unknown>;
  const height = (p?.height ?? p?.size) as number;
  const width = (p?.width ?? p?.size) as number;
  const preprocessing = { channels: p?.channels, height, width, invert: p?.invert } as Preprocessing;
  if ((preprocessing.channels !== 1 && preprocessing.channels !== 3) || !Number.isInteger(height) || !Number.isInteger(width) || typeof preprocessing.invert !== 'boolean') {
    throw new Error(`${source}: metadata '${METADATA_KEYS.preprocessing}' must give channels (1 or 3), size (or height and width) and invert, got ${metadata[METADATA_KEYS.preprocessing]}`);
  }
  return { classNames, preprocessing, batchNorm: metadata[METADATA_KEYS.batchNorm] };
}

export interface Prediction {
  file: string;
  className: string;
  classIndex: number;
  probabilities: number[];
}

export interface PredictOptions {
  model: string;
  images: string[];
  provider: OnnxProvider;
  notice?: (line: string) => void;
}

/**
 * Classifies the images in one batch. With a batch-norm 'batch' model the predictions
 * depend on which images are classified together (as at training time); 'support' models
 * classify each image on its own.
 */
export async function predict(options: PredictOptions): Promise<Prediction[]> {
  const metadata = await readMetadata(options.model);
  const { classNames, preprocessing } = parseModelMetadata(metadata, options.model);
  const images = await loadImagesForPrediction(options.images, preprocessing);
  const session = await createSession(options.model, { provider: options.provider, notice: options.notice });
  try {
    const n = options.images.length;
    const { probabilities } = await run(session, images, n, [preprocessing.channels, preprocessing.height, preprocessing.width]);
    const k = probabilities.length / n;
    if (k !== classNames.length) throw new Error(`${options.model} has ${k} outputs but ${classNames.length} class names in its metadata`);
    return options.images.map((file, i) => {
      const row = Array.from(probabilities.subarray(i * k, (i + 1) * k));
      let best = 0;
      for (let j = 1; j < k; ++j) if (row[j] > row[best]) best = j;
      return { file, className: classNames[best], classIndex: best, probabilities: row };
    });
  } finally {
    await closeSession(session);
  }
}

/** A plain text table: file, predicted class, its probability, then one column per class. */
export function formatPredictions(results: Prediction[], classNames?: string[]): string {
  if (results.length === 0) return '(no images)\n';
  const names = classNames ?? results[0].probabilities.map((_, j) => `class ${j}`);
  const header = ['file', 'class', 'p', ...names];
  const rows = results.map((r) => [r.file, r.className, r.probabilities[r.classIndex].toFixed(4), ...r.probabilities.map((p) => p.toFixed(4))]);
  const widths = header.map((h, j) => Math.max(h.length, ...rows.map((row) => row[j].length)));
  const line = (cells: string[]): string => cells.map((cell, j) => (j < 2 ? cell.padEnd(widths[j]) : cell.padStart(widths[j]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n') + '\n';
}
