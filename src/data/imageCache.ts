// The on-disk image cache shared by every data set: DIR/pixels.u8 holds raw uint8
// images [count, C, H, W] in CHW order and DIR/index.json describes them.
//
// Writing is atomic in the only sense that matters to readers: pixels are streamed to a
// temporary file (bounded memory, never the whole data set), the index to another, then
// pixels are renamed first and index.json last. A directory without index.json is never
// a complete cache, whatever else it holds.
import { createWriteStream, type WriteStream } from 'node:fs';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

export interface CacheClass {
  name: string;
  group: string;
  source: string;
  first: number;
  count: number;
}

export interface CacheIndex {
  format: 'maml-native-image-cache';
  version: 1;
  dataset: string;
  imageShape: [number, number, number]; // C, H, W
  count: number;
  invert: boolean;
  classes: CacheClass[];
  files: string[]; // one relative source path per image, in cache order
  sourceChecksum: string;
  createdAt: string;
  notes?: string[];
}

export const PIXELS_FILE = 'pixels.u8';
export const INDEX_FILE = 'index.json';

function imageBytes(shape: [number, number, number]): number {
  return shape[0] * shape[1] * shape[2];
}

export class ImageCacheWriter {
  readonly dir: string;
  private readonly dataset: string;
  private readonly imageShape: [number, number, number];
  private readonly invert: boolean;
  private readonly pixelsTmp: string;
  private readonly indexTmp: string;
  private stream: WriteStream | undefined;
  private streamError: Error | undefined;
  private readonly classes: CacheClass[] = [];
  private readonly files: string[] = [];
  private state: 'open' | 'finished' | 'aborted' = 'open';

  constructor(dir: string, options: { dataset: string; imageShape: [number, number, number]; invert: boolean }) {
    const shape = options.imageShape;
    if (!Array.isArray(shape) || shape.length !== 3 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
      throw new Error(`ImageCacheWriter: imageShape must be [C, H, W] of positive integers, got ${JSON.stringify(shape)}`);
    }
    this.dir = dir;
    this.dataset = options.dataset;
    this.imageShape = [shape[0], shape[1], shape[2]];
    this.invert = options.invert;
    this.pixelsTmp = path.join(dir, `${PIXELS_FILE}.tmp-${process.pid}`);
    this.indexTmp = path.join(dir, `${INDEX_FILE}.tmp-${process.pid}`);
  }

  private open(): WriteStream {
    if (this.stream) return this.stream;
    fs.mkdirSync(this.dir, { recursive: true });
    // Opened synchronously so the temporary exists (and open errors surface) right away.
    const stream = createWriteStream(this.pixelsTmp, { fd: fs.openSync(this.pixelsTmp, 'w') });
    stream.on('error', (err) => {
      this.streamError ??= err;
    });
    this.stream = stream;
    return stream;
  }

  /** Starts a new class; the images appended after it belong to it. */
  beginClass(name: string, group: string, source: string): void {
    this.checkOpen('beginClass');
    this.classes.push({ name, group, source, first: this.files.length, count: 0 });
  }

  /** Appends one image (C*H*W bytes, CHW order) to the current class. */
  async append(pixels: Uint8Array, file: string): Promise<void> {
    this.checkOpen('append');
    const current = this.classes[this.classes.length - 1];
    if (!current) throw new Error(`ImageCacheWriter.append(${file}): call beginClass() before the first image`);
    const expected = imageBytes(this.imageShape);
    if (pixels.length !== expected) {
      throw new Error(
        `ImageCacheWriter.append(${file}): got ${pixels.length} bytes, expected ${expected} (C*H*W for shape ${this.imageShape.join('x')})`,
      );
    }
    const stream = this.open();
    if (this.streamError) throw this.streamError;
    current.count++;
    this.files.push(file);
    // Copy: the caller may reuse its buffer while the stream still holds ours.
    if (!stream.write(Buffer.from(pixels))) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => {
          stream.off('error', onError);
          resolve();
        };
        const onError = (err: Error): void => {
          stream.off('drain', onDrain);
          reject(err);
        };
        stream.once('drain', onDrain);
        stream.once('error', onError);
      });
    }
    if (this.streamError) throw this.streamError;
  }

  /** Flushes pixels, writes the index, and renames both into place (index last). */
  async finish(extra: { sourceChecksum: string; notes?: string[] }): Promise<CacheIndex> {
    this.checkOpen('finish');
    const stream = this.open();
    await new Promise<void>((resolve, reject) => {
      if (this.streamError) return reject(this.streamError);
      stream.once('error', reject);
      stream.end(() => resolve());
    });
    if (this.streamError) throw this.streamError;
    const index: CacheIndex = {
      format: 'maml-native-image-cache',
      version: 1,
      dataset: this.dataset,
      imageShape: this.imageShape,
      count: this.files.length,
      invert: this.invert,
      classes: this.classes,
      files: this.files,
      sourceChecksum: extra.sourceChecksum,
      createdAt: new Date().toISOString(),
      ...(extra.notes && extra.notes.length > 0 ? { notes: extra.notes } : {}),
    };
    const size = (await fsp.stat(this.pixelsTmp)).size;
    if (size !== index.count * imageBytes(this.imageShape)) {
      throw new Error(`ImageCacheWriter.finish: ${this.pixelsTmp} has ${size} bytes, expected ${index.count * imageBytes(this.imageShape)}`);
    }
    await fsp.writeFile(this.indexTmp, JSON.stringify(index));
    // A stale index.json from an earlier cache must not describe the new pixels.
    await fsp.rm(path.join(this.dir, INDEX_FILE), { force: true });
    await fsp.rename(this.pixelsTmp, path.join(this.dir, PIXELS_FILE));
    await fsp.rename(this.indexTmp, path.join(this.dir, INDEX_FILE));
    this.state = 'finished';
    return index;
  }

  /** Stops writing and removes the temporaries; an earlier complete cache is left as it was. */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    const stream = this.stream;
    if (stream && !stream.closed) {
      await new Promise<void>((resolve) => {
        stream.once('close', () => resolve());
        stream.destroy();
      });
    }
    await fsp.rm(this.pixelsTmp, { force: true });
    await fsp.rm(this.indexTmp, { force: true });
  }

  private checkOpen(what: string): void {
    if (this.state !== 'open') throw new Error(`ImageCacheWriter.${what}: the writer is already ${this.state}`);
  }
}

function readIndex(dir: string): CacheIndex {
  const indexPath = path.join(dir, INDEX_FILE);
  let text: string;
  try {
    text = fs.readFileSync(indexPath, 'utf8');
  } catch (err) {
    throw new Error(
      `No complete image cache in ${dir}: ${indexPath} is missing (${(err as NodeJS.ErrnoException).code ?? err}). ` +
        `Run 'npx maml-native prepare <dataset> --src <images> --out <dir>' to build it.`,
    );
  }
  let index: CacheIndex;
  try {
    index = JSON.parse(text) as CacheIndex;
  } catch (err) {
    throw new Error(`${indexPath} is not valid JSON (${(err as Error).message}); re-run prepare to rebuild the cache.`);
  }
  if (index.format !== 'maml-native-image-cache' || index.version !== 1) {
    throw new Error(
      `${indexPath} is not a maml-native image cache version 1 (format=${JSON.stringify(index.format)}, version=${JSON.stringify(index.version)}); re-run prepare to rebuild the cache.`,
    );
  }
  return index;
}

/** Returns the index when DIR holds a complete cache (index present, pixel file of the right size). */
export function isCacheComplete(dir: string): CacheIndex | undefined {
  try {
    const index = readIndex(dir);
    const size = fs.statSync(path.join(dir, PIXELS_FILE)).size;
    return size === index.count * imageBytes(index.imageShape) ? index : undefined;
  } catch {
    return undefined;
  }
}

/** Loads the whole cache into memory; throws with the file and the fix when it is incomplete. */
export function loadImageCache(dir: string): { pixels: Buffer; index: CacheIndex } {
  const { index, pixelsFile } = openImageCache(dir, 0);
  return { index, pixels: fs.readFileSync(pixelsFile) };
}

/** Checks the cache; its pixels are read into memory when the file is at most maxInMemoryBytes. */
export function openImageCache(dir: string, maxInMemoryBytes: number): { pixels?: Buffer; pixelsFile: string; index: CacheIndex } {
  const index = readIndex(dir);
  const pixelsPath = path.join(dir, PIXELS_FILE);
  const expected = index.count * imageBytes(index.imageShape);
  let size: number;
  try {
    size = fs.statSync(pixelsPath).size;
  } catch {
    throw new Error(`${pixelsPath} is missing although ${path.join(dir, INDEX_FILE)} exists; re-run prepare to rebuild the cache.`);
  }
  if (size !== expected) {
    throw new Error(
      `${pixelsPath} has ${size} bytes, expected ${expected} (${index.count} images of ${index.imageShape.join('x')}); ` +
        `the cache is damaged or from another run: re-run prepare to rebuild it.`,
    );
  }
  return { index, pixelsFile: pixelsPath, pixels: size <= maxInMemoryBytes ? fs.readFileSync(pixelsPath) : undefined };
}
