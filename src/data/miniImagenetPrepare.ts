// MiniImagenet -> image cache: every image decoded once with sharp to 3-channel sRGB,
// resized to 84x84 (lanczos3, fit 'fill', as the original's resize to 84x84), stored CHW.
// Streams: a small window of decodes in flight, results appended in csv order, so memory
// stays flat whatever the size of the set (60000 images make a 1.27 GB cache).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { ImageCacheWriter, isCacheComplete, type CacheIndex } from './imageCache.js';
import { detectMiniImagenetLayout, type MiniImagenetImage, type MiniImagenetLayout } from './miniImagenetLayout.js';

export const MINI_IMAGENET_SIZE = 84;
export const MINI_IMAGENET_SHAPE: [number, number, number] = [3, MINI_IMAGENET_SIZE, MINI_IMAGENET_SIZE];
/** Bumped when the decoding changes, so an older cache is rebuilt. */
const PREPARE_VERSION = 'miniimagenet-prepare-1 srgb 84x84 lanczos3 fill chw';

export interface PrepareMiniImagenetOptions {
  src: string;
  splits?: string;
  out: string;
  skipBad?: boolean;
  onProgress?: (done: number, total: number) => void;
  /**
   * Decodes in flight at once (default 4; each decode single-threaded). Measured on 2 cores,
   * 6000 84x84 JPEGs: 1 in flight 1.4-2.4 ms per image, 2: 1.4-2.3 ms, 4: 1.0-1.9 ms (a
   * tiny JPEG is mostly per-pipeline overhead and file I/O, which more in flight hides).
   */
  concurrency?: number;
}

export interface PrepareMiniImagenetResult {
  cacheDir: string;
  index: CacheIndex;
  alreadyPrepared: boolean;
  report: string[];
}

/** sha256 over the decoding version, the csv texts and the sorted (relative path, size) of every image used. */
export function miniImagenetSourceChecksum(layout: MiniImagenetLayout): string {
  const hash = createHash('sha256');
  hash.update(`${PREPARE_VERSION}\n`);
  for (const csv of layout.csvs) hash.update(`csv ${csv.split} ${csv.text.length}\n${csv.text}\n`);
  const entries: string[] = [];
  for (const c of layout.classes) {
    for (const image of c.images) entries.push(`${image.relative}\t${fs.statSync(image.path).size}\t${c.name}\t${image.file}`);
  }
  entries.sort();
  for (const e of entries) hash.update(`${e}\n`);
  return hash.digest('hex');
}

/** Decodes one image to 84x84 sRGB, CHW uint8. */
export async function decodeMiniImagenetImage(file: string): Promise<Uint8Array> {
  const size = MINI_IMAGENET_SIZE;
  // An image already 84x84 passes the resize untouched (checked: byte-identical), so no
  // separate metadata read (0.7 ms per image) is spent to skip it.
  const { data, info } = await sharp(file)
    .removeAlpha()
    .toColourspace('srgb')
    .resize(size, size, { fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size || info.channels !== 3) {
    throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${size}x${size}x3`);
  }
  const plane = size * size;
  const chw = new Uint8Array(3 * plane);
  for (let i = 0, j = 0; i < plane; i++, j += 3) {
    chw[i] = data[j];
    chw[plane + i] = data[j + 1];
    chw[2 * plane + i] = data[j + 2];
  }
  return chw;
}

interface Job {
  classIndex: number;
  image: MiniImagenetImage;
}

type Decoded = { ok: true; pixels: Uint8Array } | { ok: false; reason: string };

async function tryDecode(file: string): Promise<Decoded> {
  try {
    return { ok: true, pixels: await decodeMiniImagenetImage(file) };
  } catch (err) {
    return { ok: false, reason: (err as Error).message ?? String(err) };
  }
}

export async function prepareMiniImagenet(options: PrepareMiniImagenetOptions): Promise<PrepareMiniImagenetResult> {
  const cacheDir = path.join(options.out, 'miniimagenet');
  const layout = detectMiniImagenetLayout(options.src, options.splits);
  const report = [...layout.report];
  const sourceChecksum = miniImagenetSourceChecksum(layout);

  const existing = isCacheComplete(cacheDir);
  if (existing && existing.sourceChecksum === sourceChecksum && existing.dataset === 'miniimagenet') {
    report.push(`${cacheDir} already holds this source (checksum ${sourceChecksum.slice(0, 12)}): ${existing.count} images, nothing rewritten`);
    return { cacheDir, index: existing, alreadyPrepared: true, report };
  }

  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 4));
  const jobs: Job[] = [];
  layout.classes.forEach((c, classIndex) => {
    for (const image of c.images) jobs.push({ classIndex, image });
  });
  const total = jobs.length;

  // libvips threads inside one image do little at 84x84; parallelism comes from images in flight.
  // Its operation cache only grows memory when every file is read once.
  const previousConcurrency = sharp.concurrency();
  const previousCache = sharp.cache();
  sharp.concurrency(1);
  sharp.cache(false);

  const writer = new ImageCacheWriter(cacheDir, { dataset: 'miniimagenet', imageShape: MINI_IMAGENET_SHAPE, invert: false });
  const skipped: string[] = [];
  const started = Date.now();
  try {
    const inFlight: Promise<Decoded>[] = [];
    let next = 0;
    const launch = (): void => {
      while (next < total && inFlight.length < concurrency) inFlight.push(tryDecode(jobs[next++].image.path));
    };
    let currentClass = -1;
    launch();
    for (let done = 0; done < total; done++) {
      const result = await inFlight.shift()!;
      launch();
      const job = jobs[done];
      const c = layout.classes[job.classIndex];
      if (!result.ok) {
        if (!options.skipBad) {
          throw new Error(`cannot decode ${job.image.path} (${c.name}, ${c.source}): ${result.reason}. Fix or remove the file, or pass --skip-bad to skip it.`);
        }
        skipped.push(`${job.image.relative}: ${result.reason}`);
      } else {
        if (currentClass !== job.classIndex) {
          writer.beginClass(c.name, c.split, c.source);
          currentClass = job.classIndex;
        }
        await writer.append(result.pixels, job.image.relative);
      }
      options.onProgress?.(done + 1, total);
    }
    const notes: string[] = [];
    if (skipped.length > 0) {
      report.push(`skipped ${skipped.length} files that could not be decoded (--skip-bad):`);
      for (const s of skipped) report.push(`  ${s}`);
      notes.push(...skipped.map((s) => `skipped ${s}`));
    }
    const index = await writer.finish({ sourceChecksum, notes: [...layout.report, ...notes] });
    const lost = layout.classes.filter((c) => !index.classes.some((k) => k.name === c.name));
    if (lost.length > 0) report.push(`warning: ${lost.length} classes lost every image to --skip-bad and are not in the cache: ${lost.map((c) => c.name).join(', ')}`);
    const seconds = (Date.now() - started) / 1000;
    report.push(
      `wrote ${index.count} images of ${index.classes.length} classes to ${cacheDir} in ${seconds.toFixed(1)} s ` +
        `(${((seconds * 1000) / Math.max(1, index.count)).toFixed(2)} ms per image, ${concurrency} in flight)`,
    );
    return { cacheDir, index, alreadyPrepared: false, report };
  } catch (err) {
    await writer.abort();
    throw err;
  } finally {
    sharp.concurrency(previousConcurrency);
    sharp.cache({ memory: previousCache.memory.max ?? 50, files: previousCache.files.max, items: previousCache.items.max });
  }
}
