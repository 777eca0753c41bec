// `prepare omniglot`: decodes every PNG once into the shared image cache (1x28x28 uint8).
//
// The pipeline follows the original MAML data script: greyscale, resize 105x105 -> 28x28
// with a Lanczos kernel (PIL LANCZOS there, libvips lanczos3 here). The cache keeps the
// files' polarity (strokes dark, background 255) and says invert: true, so the native side
// maps value = 1 - pixel/255 and strokes become 1, as in the original.
import * as os from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { ImageCacheWriter, isCacheComplete, type CacheIndex } from './imageCache.js';
import { findOmniglotLayout } from './omniglotLayout.js';

export const OMNIGLOT_SIZE = 28;
export const OMNIGLOT_IMAGE_SHAPE: [number, number, number] = [1, OMNIGLOT_SIZE, OMNIGLOT_SIZE];
const PIPELINE_NOTE = 'pipeline: sharp greyscale, resize to 28x28 fit=fill kernel=lanczos3, uint8, strokes dark (invert: true)';
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Width and height from a PNG's IHDR chunk, or a reason why the bytes are not a PNG. */
export function pngSize(data: Buffer): { width: number; height: number } | string {
  if (data.length === 0) return 'the file is empty';
  if (data.length < 24 || !data.subarray(0, 8).equals(PNG_SIGNATURE)) {
    return `not a PNG file (does not start with the PNG signature; first bytes ${data.subarray(0, 8).toString('hex')})`;
  }
  if (data.toString('latin1', 12, 16) !== 'IHDR') return 'not a valid PNG file (the first chunk is not IHDR)';
  // Every PNG ends with an empty IEND chunk; without it the file was cut short (a partial
  // download or copy), which libvips only reports as a bare warning.
  if (data.length < 45 || data.toString('latin1', data.length - 8, data.length - 4) !== 'IEND') {
    return `the PNG file is truncated (${data.length} bytes, no IEND chunk at the end)`;
  }
  return { width: data.readUInt32BE(16), height: data.readUInt32BE(20) };
}

/** The exact pipeline the cache uses, for Lake's runs and user images: 784 bytes, strokes dark. */
export async function decodeOmniglotImage(data: Buffer | string): Promise<Uint8Array> {
  const { data: pixels, info } = await sharp(data)
    .flatten({ background: '#ffffff' }) // an alpha channel, if any, composited on white paper
    .greyscale()
    .resize(OMNIGLOT_SIZE, OMNIGLOT_SIZE, { kernel: 'lanczos3', fit: 'fill' })
    .toColourspace('b-w')
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 1 || pixels.length !== OMNIGLOT_SIZE * OMNIGLOT_SIZE) {
    throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${OMNIGLOT_SIZE}x${OMNIGLOT_SIZE}x1`);
  }
  return new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.length);
}

export interface PrepareOmniglotResult {
  cacheDir: string;
  index: CacheIndex;
  alreadyPrepared: boolean;
  report: string[];
}

export async function prepareOmniglot(options: {
  src: string;
  out: string;
  onProgress?: (done: number, total: number) => void;
  concurrency?: number;
}): Promise<PrepareOmniglotResult> {
  const cacheDir = path.join(options.out, 'omniglot');
  const layout = await findOmniglotLayout(options.src);
  const report = [...layout.report];
  let writer: ImageCacheWriter | undefined;
  const pending: Promise<Uint8Array>[] = [];
  let previousVipsThreads: number | undefined;
  try {
    const existing = isCacheComplete(cacheDir);
    if (
      existing &&
      existing.dataset === 'omniglot' &&
      existing.sourceChecksum === layout.sourceChecksum &&
      existing.imageShape.join('x') === OMNIGLOT_IMAGE_SHAPE.join('x') &&
      existing.invert === true &&
      (existing.notes ?? []).includes(PIPELINE_NOTE)
    ) {
      return { cacheDir, index: existing, alreadyPrepared: true, report };
    }

    // Images are tiny (105x105): parallelism comes from many images in flight on libuv's
    // pool, not from libvips threads inside one image (measured: 2 threads per image was
    // slower than 1 with 4 images in flight on 2 cores), so libvips gets one thread each.
    previousVipsThreads = sharp.concurrency();
    sharp.concurrency(1);
    const inFlight = Math.max(1, options.concurrency ?? Math.max(2, os.availableParallelism() * 2));
    writer = new ImageCacheWriter(cacheDir, { dataset: 'omniglot', imageShape: OMNIGLOT_IMAGE_SHAPE, invert: true });
    const total = layout.imageCount;
    const jobs = layout.characters.flatMap((c) => c.images.map((image, i) => ({ c, image, first: i === 0 })));
    const odd: string[] = [];
    const decodeOne = async (job: (typeof jobs)[number]): Promise<Uint8Array> => {
      const bytes = await job.image.read();
      const size = pngSize(bytes);
      if (typeof size === 'string') throw new Error(`${job.image.origin}: ${size}`);
      if (size.width !== 105 || size.height !== 105) odd.push(`${job.image.path} is ${size.width}x${size.height}`);
      try {
        return await decodeOmniglotImage(bytes);
      } catch (err) {
        throw new Error(`${job.image.origin}: not a decodable PNG image (${(err as Error).message}); replace the file or re-download the data set`);
      }
    };

    // A sliding window of decodes: at most `inFlight` pending, results taken in order.
    let next = 0;
    let done = 0;
    const launch = (): void => {
      const p = decodeOne(jobs[next++]!);
      p.catch(() => undefined); // surfaced when awaited in order; avoids an unhandled rejection meanwhile
      pending.push(p);
    };
    while (next < jobs.length && pending.length < inFlight) launch();
    for (let i = 0; i < jobs.length; i++) {
      const pixels = await pending.shift()!;
      if (next < jobs.length) launch();
      const job = jobs[i]!;
      if (job.first) writer.beginClass(job.c.name, job.c.alphabet, job.c.source);
      await writer.append(pixels, job.image.path);
      done++;
      options.onProgress?.(done, total);
    }
    if (odd.length > 0) {
      report.push(`${odd.length} images are not 105x105 (resized anyway), e.g. ${odd.slice(0, 3).join(', ')}`);
    }
    const index = await writer.finish({ sourceChecksum: layout.sourceChecksum, notes: [PIPELINE_NOTE, ...report] });
    return { cacheDir, index, alreadyPrepared: false, report };
  } catch (err) {
    await Promise.allSettled(pending); // let in-flight reads finish before the zips close
    await writer?.abort();
    throw err;
  } finally {
    if (previousVipsThreads !== undefined) sharp.concurrency(previousVipsThreads);
    await layout.close();
  }
}
