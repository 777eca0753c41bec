// Reads a labelled support folder (one sub-folder per class, sorted by name) or a list of
// images to classify, into network inputs [n, C, H, W] scaled as the native side scales the
// image cache: value = pixel / 255, or 1 - pixel / 255 with invert (float32 arithmetic).
//
// Decoding (sharp): the first frame/page; transparency is flattened onto white (paper);
// 1 channel: greyscale; 3 channels: sRGB (a greyscale image is replicated into R, G and B;
// an alpha channel is dropped after flattening), so an image's own channel count never has
// to match the model's. Resized to exactly height x width (aspect ratio not kept, as
// PIL's resize in the original) with the lanczos3 kernel. BMP, which sharp's bundled
// libvips does not read, is decoded here (uncompressed 1/4/8/24/32-bit) and then goes
// through the same pipeline. Nothing is ever written.
import { readdir, readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import sharp from 'sharp';

export interface Preprocessing {
  channels: 1 | 3;
  height: number;
  width: number;
  invert: boolean;
}

export interface SupportSet {
  classNames: string[];
  /** [n, C, H, W] network inputs */
  images: Float32Array;
  /** [n] class index into classNames */
  labels: Int32Array;
  /** [n] the image files, in the order of images */
  files: string[];
  /** files in class folders that are not images by their extension (not read) */
  skipped: string[];
}

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.jpe', '.jfif', '.webp', '.gif', '.tif', '.tiff', '.bmp', '.avif'];
const IGNORED = new Set(['thumbs.db', 'desktop.ini']);

const isImageName = (name: string): boolean => IMAGE_EXTENSIONS.includes(path.extname(name).toLowerCase());
const isHidden = (name: string): boolean => name.startsWith('.') || IGNORED.has(name.toLowerCase());

function checkPreprocessing(p: Preprocessing): void {
  if (p.channels !== 1 && p.channels !== 3) throw new Error(`preprocessing.channels must be 1 or 3, got ${JSON.stringify(p.channels)}`);
  for (const key of ['height', 'width'] as const) {
    if (!Number.isInteger(p[key]) || p[key] < 1) throw new Error(`preprocessing.${key} must be a positive integer, got ${JSON.stringify(p[key])}`);
  }
  if (typeof p.invert !== 'boolean') throw new Error(`preprocessing.invert must be true or false, got ${JSON.stringify(p.invert)}`);
}

/** Decodes an uncompressed BMP into raw RGBA pixels for sharp. */
export function decodeBmp(bytes: Uint8Array, file: string): { data: Buffer; width: number; height: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (why: string): never => {
    throw new Error(`cannot read image ${file}: ${why}; convert it to PNG (e.g. \`convert in.bmp out.png\`)`);
  };
  if (bytes.length < 54 || bytes[0] !== 0x42 || bytes[1] !== 0x4d) fail('not a BMP file (no BM header)');
  const dataOffset = view.getUint32(10, true);
  const headerSize = view.getUint32(14, true);
  if (headerSize < 40) fail(`unsupported BMP header of ${headerSize} bytes (OS/2 bitmap)`);
  const width = view.getInt32(18, true);
  const rawHeight = view.getInt32(22, true);
  const bits = view.getUint16(28, true);
  const compression = view.getUint32(30, true);
  const height = Math.abs(rawHeight);
  const topDown = rawHeight < 0;
  if (width <= 0 || height === 0 || width * height > 1 << 28) fail(`implausible size ${width}x${height}`);
  if (!(compression === 0 || (compression === 3 && bits === 32))) fail(`compressed BMP (compression ${compression}) is not supported`);
  if (![1, 4, 8, 24, 32].includes(bits)) fail(`${bits}-bit BMP is not supported`);
  let colours = view.getUint32(46, true);
  if (bits <= 8 && colours === 0) colours = 1 << bits;
  const paletteAt = 14 + headerSize;
  let masks = [0x00ff0000, 0x0000ff00, 0x000000ff, 0xff000000];
  if (compression === 3) {
    const at = headerSize >= 52 ? 54 : paletteAt;
    masks = [view.getUint32(at, true), view.getUint32(at + 4, true), view.getUint32(at + 8, true), headerSize >= 56 ? view.getUint32(at + 12, true) : 0];
  }
  const stride = Math.ceil((width * bits) / 32) * 4;
  if (dataOffset + stride * height > bytes.length) fail('the file is truncated');
  const out = Buffer.alloc(width * height * 4);
  const channel = (value: number, mask: number): number => {
    if (mask === 0) return 255;
    let shift = 0;
    while (((mask >>> shift) & 1) === 0) shift++;
    const max = mask >>> shift;
    return Math.round((((value & mask) >>> shift) * 255) / max);
  };
  for (let y = 0; y < height; ++y) {
    const row = dataOffset + (topDown ? y : height - 1 - y) * stride;
    for (let x = 0; x < width; ++x) {
      const o = (y * width + x) * 4;
      if (bits <= 8) {
        const perByte = 8 / bits;
        const byte = bytes[row + Math.floor(x / perByte)];
        const index = (byte >> ((perByte - 1 - (x % perByte)) * bits)) & ((1 << bits) - 1);
        if (index >= colours) fail(`palette index ${index} outside the ${colours}-colour palette`);
        const p = paletteAt + index * 4;
        out[o] = bytes[p + 2];
        out[o + 1] = bytes[p + 1];
        out[o + 2] = bytes[p];
        out[o + 3] = 255;
      } else if (bits === 24) {
        const p = row + x * 3;
        out[o] = bytes[p + 2];
        out[o + 1] = bytes[p + 1];
        out[o + 2] = bytes[p];
        out[o + 3] = 255;
      } else {
        const v = view.getUint32(row + x * 4, true);
        out[o] = channel(v, masks[0]);
        out[o + 1] = channel(v, masks[1]);
        out[o + 2] = channel(v, masks[2]);
        // BI_RGB 32-bit: the fourth byte is usually unused (0): treat as opaque
        out[o + 3] = compression === 3 && masks[3] ? channel(v, masks[3]) : 255;
      }
    }
  }
  return { data: out, width, height };
}

/**
 * Decodes one image file to [C, H, W] network inputs written at `out[offset...]`.
 * Throws an error that names the file when it cannot be read or decoded.
 */
export async function decodeImage(file: string, p: Preprocessing, out: Float32Array, offset: number): Promise<void> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`cannot read image ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  let pixels: Buffer;
  let info: { width: number; height: number; channels: number };
  try {
    const isBmp = bytes.length >= 2 && bytes[0] === 0x42 && bytes[1] === 0x4d;
    let image: ReturnType<typeof sharp>;
    if (isBmp) {
      const bmp = decodeBmp(bytes, file);
      image = sharp(bmp.data, { raw: { width: bmp.width, height: bmp.height, channels: 4 } });
    } else {
      image = sharp(bytes, { pages: 1, failOn: 'error' });
    }
    image = image.flatten({ background: '#ffffff' });
    image = p.channels === 1 ? image.greyscale() : image.toColourspace('srgb');
    ({ data: pixels, info } = await image
      .resize(p.width, p.height, { fit: 'fill', kernel: 'lanczos3' })
      .raw()
      .toBuffer({ resolveWithObject: true }));
  } catch (error) {
    const message = (error as Error).message;
    if (message.startsWith(`cannot read image ${file}`)) throw error;
    throw new Error(`cannot read image ${file}: ${message.split('\n')[0]} (is it a PNG, JPEG, WebP, GIF, TIFF, AVIF or BMP image? re-save it or remove it)`);
  }
  if (info.width !== p.width || info.height !== p.height) {
    throw new Error(`decoding ${file} gave ${info.width}x${info.height}, not ${p.width}x${p.height}`);
  }
  // sharp may keep extra channels (e.g. greyscale + alpha): pick the first C of each pixel
  const have = info.channels;
  if (have < p.channels) throw new Error(`decoding ${file} gave ${have} channel(s), ${p.channels} needed`);
  const plane = p.width * p.height;
  const scale = Math.fround(1 / 255);
  for (let c = 0; c < p.channels; ++c) {
    for (let i = 0; i < plane; ++i) {
      const value = Math.fround(pixels[i * have + c] * scale);
      out[offset + c * plane + i] = p.invert ? 1 - value : value;
    }
  }
}

/** Decodes a list of images (e.g. for predict) into [n, C, H, W]; the first unreadable one stops it. */
export async function loadImagesForPrediction(files: string[], preprocessing: Preprocessing): Promise<Float32Array> {
  checkPreprocessing(preprocessing);
  if (files.length === 0) throw new Error('no images given to classify');
  const each = preprocessing.channels * preprocessing.height * preprocessing.width;
  const images = new Float32Array(files.length * each);
  for (let i = 0; i < files.length; ++i) await decodeImage(files[i], preprocessing, images, i * each);
  return images;
}

/** Reads DIR/<class>/<image> into a labelled support set (classes sorted by folder name). */
export async function loadSupportFolder(dir: string, preprocessing: Preprocessing): Promise<SupportSet> {
  checkPreprocessing(preprocessing);
  let entries;
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error('not a directory');
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new Error(`support folder ${dir} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? (error as Error).message})`}: give a folder with one sub-folder of images per class`);
  }
  const classes = entries.filter((e) => e.isDirectory() && !isHidden(e.name)).map((e) => e.name);
  classes.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const loose = entries.filter((e) => e.isFile() && isImageName(e.name)).map((e) => e.name);
  if (classes.length === 0) {
    throw new Error(
      `support folder ${dir} has no class sub-folders${loose.length ? ` (it holds ${loose.length} image file(s) directly)` : ''}: ` +
        `put each class's images in their own sub-folder, e.g. ${path.join(dir, 'cat', '1.png')} and ${path.join(dir, 'dog', '1.png')}`,
    );
  }
  if (loose.length) {
    throw new Error(`support folder ${dir} holds image files outside the class sub-folders (${loose.slice(0, 3).join(', ')}${loose.length > 3 ? ', ...' : ''}): move each into its class's sub-folder`);
  }
  if (classes.length < 2) {
    throw new Error(`support folder ${dir} has only one class (${classes[0]}): a classifier needs at least two class sub-folders`);
  }
  const files: string[] = [];
  const labels: number[] = [];
  const skipped: string[] = [];
  for (let c = 0; c < classes.length; ++c) {
    const classDir = path.join(dir, classes[c]);
    const names = (await readdir(classDir, { withFileTypes: true }))
      .filter((e) => e.isFile() && !isHidden(e.name))
      .map((e) => e.name)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const images = names.filter(isImageName);
    for (const name of names) if (!isImageName(name)) skipped.push(path.join(classDir, name));
    if (images.length === 0) {
      throw new Error(
        `class folder ${classDir} has no images${names.length ? ` (only ${names.slice(0, 3).join(', ')}, which are not ${IMAGE_EXTENSIONS.join('/')} files)` : ''}: ` +
          `add at least one image of class '${classes[c]}' or remove the folder`,
      );
    }
    for (const name of images) {
      files.push(path.join(classDir, name));
      labels.push(c);
    }
  }
  const images = await loadImagesForPrediction(files, preprocessing);
  return { classNames: classes, images, labels: Int32Array.from(labels), files, skipped };
}
