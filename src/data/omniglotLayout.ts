// Finds Omniglot wherever the user has it: the folder holding images_background.zip and
// images_evaluation.zip, the zips themselves, their unpacked folders, or any folder above
// them with extra wrapping folders. Levels are found by content, not by depth from --src:
// a folder of .png files is a character, its parent an alphabet, and the nearest folder
// (or zip) above named images_background / images_evaluation says which half it is
// ('background' when none is).
//
// Every listing is sorted by code point so the cache is byte-identical on every OS, and
// each image gets a canonical path `images_<source>/<alphabet>/<character>/<file>` that does
// not depend on how the data was wrapped or packed (zip or folder give the same checksum).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import yauzl from 'yauzl';

export type OmniglotSource = 'background' | 'evaluation';

export interface OmniglotImageEntry {
  /** Canonical relative path, e.g. images_background/Latin/character01/0001_01.png */
  path: string;
  /** Where the bytes really are, for error messages (a file, or `archive.zip:entry`). */
  origin: string;
  size: number;
  read(): Promise<Buffer>;
}

export interface OmniglotCharacter {
  name: string; // `${alphabet}/${character}`
  alphabet: string;
  character: string;
  source: OmniglotSource;
  images: OmniglotImageEntry[];
}

export interface OmniglotLayout {
  /** Background first, then evaluation; alphabets and characters sorted by code point. */
  characters: OmniglotCharacter[];
  imageCount: number;
  /** Warnings about what is missing or odd; empty when the data is the full, regular set. */
  report: string[];
  /** sha256 over the sorted canonical paths and file sizes. */
  sourceChecksum: string;
  /** Closes open zip files. */
  close(): Promise<void>;
}

/** The 50 alphabets of the Omniglot release and their character counts (964 + 659). */
export const OMNIGLOT_ALPHABETS: Record<OmniglotSource, Record<string, number>> = {
  background: {
    Alphabet_of_the_Magi: 20, 'Anglo-Saxon_Futhorc': 29, Arcadian: 26, Armenian: 41, 'Asomtavruli_(Georgian)': 40,
    Balinese: 24, Bengali: 46, 'Blackfoot_(Canadian_Aboriginal_Syllabics)': 14, Braille: 26, 'Burmese_(Myanmar)': 34,
    Cyrillic: 33, Early_Aramaic: 22, Futurama: 26, Grantha: 43, Greek: 24, Gujarati: 48, Hebrew: 22,
    'Inuktitut_(Canadian_Aboriginal_Syllabics)': 16, 'Japanese_(hiragana)': 52, 'Japanese_(katakana)': 47, Korean: 40,
    Latin: 26, 'Malay_(Jawi_-_Arabic)': 40, 'Mkhedruli_(Georgian)': 41, N_Ko: 33,
    'Ojibwe_(Canadian_Aboriginal_Syllabics)': 14, Sanskrit: 42, 'Syriac_(Estrangelo)': 23, Tagalog: 17, Tifinagh: 55,
  },
  evaluation: {
    Angelic: 20, Atemayar_Qelisayer: 26, Atlantean: 26, 'Aurek-Besh': 26, Avesta: 26, Ge_ez: 26, Glagolitic: 45,
    Gurmukhi: 45, Kannada: 41, Keble: 26, Malayalam: 47, Manipuri: 40, Mongolian: 30,
    'Old_Church_Slavonic_(Cyrillic)': 45, Oriya: 46, Sylheti: 28, 'Syriac_(Serto)': 23, Tengwar: 25, Tibetan: 42, ULOG: 26,
  },
};
export const OMNIGLOT_IMAGES_PER_CHARACTER = 20;

/** Code-point order (not locale order), so listings agree on every OS and locale. */
export function compareCodePoints(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// Files that archivers and file managers leave next to real data; never images.
function isJunkName(name: string): boolean {
  return name.startsWith('.') || name === '__MACOSX' || name === 'Thumbs.db';
}

function sourceOfSegment(segment: string): OmniglotSource | undefined {
  const m = /^images_(background|evaluation)/i.exec(segment);
  return m ? (m[1]!.toLowerCase() as OmniglotSource) : undefined;
}

interface FoundImage {
  segments: string[]; // absolute path segments (zip path segments, then entry segments)
  origin: string;
  size: number;
  fromZip: boolean;
  read(): Promise<Buffer>;
}

async function readZipEntry(zip: yauzl.ZipFile, entry: yauzl.Entry, origin: string): Promise<Buffer> {
  try {
    const stream = await zip.openReadStreamPromise(entry);
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  } catch (err) {
    throw new Error(`${origin}: cannot read the zip entry (${(err as Error).message})`);
  }
}

async function listZip(zipPath: string, found: FoundImage[], zips: yauzl.ZipFile[]): Promise<void> {
  let zip: yauzl.ZipFile;
  try {
    zip = await yauzl.openPromise(zipPath, { lazyEntries: true, autoClose: false, strictFileNames: false });
  } catch (err) {
    throw new Error(`${zipPath}: not a readable zip file (${(err as Error).message}); re-download it or unpack it and pass the folder as --src`);
  }
  zips.push(zip);
  const base = splitSegments(zipPath);
  for await (const entry of zip.eachEntry()) {
    const name = entry.fileName;
    if (name.endsWith('/')) continue;
    const inner = name.split('/').filter((s) => s.length > 0);
    if (inner.some(isJunkName) || !inner[inner.length - 1]!.toLowerCase().endsWith('.png')) continue;
    const origin = `${zipPath}:${name}`;
    found.push({
      segments: [...base, ...inner],
      origin,
      size: entry.uncompressedSize,
      fromZip: true,
      read: () => readZipEntry(zip, entry, origin),
    });
  }
}

function splitSegments(p: string): string[] {
  return path.resolve(p).split(path.sep).filter((s) => s.length > 0);
}

// Synchronous on purpose: 32k small stats are far faster in a tight sync loop than as
// 32k awaited promises, and the walk is a one-off listing before any decoding starts.
async function walk(dir: string, found: FoundImage[], zips: yauzl.ZipFile[], seen: Set<string>): Promise<void> {
  const real = fs.realpathSync(dir);
  if (seen.has(real)) return; // a symlink loop or the same folder linked twice
  seen.add(real);
  const entries = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => !isJunkName(e.name));
  entries.sort((a, b) => compareCodePoints(a.name, b.name));
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    let isDirectory = entry.isDirectory();
    let isFile = entry.isFile();
    if (entry.isSymbolicLink()) {
      const target = fs.statSync(full, { throwIfNoEntry: false }); // follows the link; undefined when dangling
      if (!target) continue;
      isDirectory = target.isDirectory();
      isFile = target.isFile();
    }
    if (isDirectory) {
      await walk(full, found, zips, seen);
    } else if (isFile) {
      const lower = entry.name.toLowerCase();
      if (lower.endsWith('.png')) {
        const size = fs.statSync(full).size;
        found.push({ segments: splitSegments(full), origin: full, size, fromZip: false, read: () => readDiskFile(full) });
      } else if (lower.endsWith('.zip') && sourceOfSegment(entry.name)) {
        await listZip(full, found, zips);
      }
    }
  }
}

async function readDiskFile(file: string): Promise<Buffer> {
  try {
    return await fsp.readFile(file);
  } catch (err) {
    throw new Error(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** Lists the Omniglot images under `src` (a folder, a zip, or a folder of zips) without decoding them. */
export async function findOmniglotLayout(src: string): Promise<OmniglotLayout> {
  let stat: fs.Stats;
  try {
    stat = await fsp.stat(src);
  } catch {
    throw new Error(
      `--src ${src} does not exist: pass the folder holding images_background.zip and images_evaluation.zip, the zips, or their unpacked folders`,
    );
  }
  const found: FoundImage[] = [];
  const zips: yauzl.ZipFile[] = [];
  const close = async (): Promise<void> => {
    for (const zip of zips) zip.close();
    zips.length = 0;
  };
  try {
    if (stat.isDirectory()) await walk(src, found, zips, new Set());
    else if (src.toLowerCase().endsWith('.zip')) await listZip(src, found, zips);
    else throw new Error(`--src ${src} is neither a folder nor a .zip file`);
    const layout = buildLayout(found);
    return { ...layout, close };
  } catch (err) {
    await close();
    throw err;
  }
}

function buildLayout(found: FoundImage[]): Omit<OmniglotLayout, 'close'> {
  const report: string[] = [];
  const byPath = new Map<string, OmniglotImageEntry & { fromZip: boolean }>();
  let duplicates = 0;
  let tooShallow = 0;
  for (const image of found) {
    const n = image.segments.length;
    if (n < 3) {
      tooShallow++;
      continue;
    }
    const [file, character, alphabet] = [image.segments[n - 1]!, image.segments[n - 2]!, image.segments[n - 3]!];
    let source: OmniglotSource = 'background';
    for (let i = n - 4; i >= 0; i--) {
      const s = sourceOfSegment(image.segments[i]!);
      if (s) {
        source = s;
        break;
      }
    }
    const canonical = `images_${source}/${alphabet}/${character}/${file}`;
    const previous = byPath.get(canonical);
    if (previous) {
      duplicates++;
      // The unpacked copy wins over a zip: it reads faster and is what the user last touched.
      if (!(previous.fromZip && !image.fromZip)) continue;
    }
    byPath.set(canonical, { path: canonical, origin: image.origin, size: image.size, read: image.read, fromZip: image.fromZip });
  }
  if (tooShallow > 0) report.push(`${tooShallow} .png files ignored: not inside an alphabet/character folder`);
  if (duplicates > 0) report.push(`${duplicates} images found twice (e.g. both zipped and unpacked); used one copy of each`);
  if (byPath.size === 0) {
    throw new Error('no Omniglot images found: expected images_background/ALPHABET/CHARACTER/*.png (or images_background.zip)');
  }

  const characters = new Map<string, OmniglotCharacter>();
  for (const entry of [...byPath.values()].sort((a, b) => compareCodePoints(a.path, b.path))) {
    const [top, alphabet, character] = entry.path.split('/') as [string, string, string];
    const key = `${top}/${alphabet}/${character}`;
    let c = characters.get(key);
    if (!c) {
      c = { name: `${alphabet}/${character}`, alphabet, character, source: top === 'images_evaluation' ? 'evaluation' : 'background', images: [] };
      characters.set(key, c);
    }
    c.images.push({ path: entry.path, origin: entry.origin, size: entry.size, read: entry.read });
  }
  // 'images_background' < 'images_evaluation', so the sort above already put background first.
  const list = [...characters.values()];
  checkCounts(list, report);

  const hash = createHash('sha256');
  let imageCount = 0;
  for (const c of list) {
    for (const image of c.images) {
      hash.update(`${image.path}\t${image.size}\n`);
      imageCount++;
    }
  }
  return { characters: list, imageCount, report, sourceChecksum: hash.digest('hex') };
}

function checkCounts(characters: OmniglotCharacter[], report: string[]): void {
  const perAlphabet = new Map<string, number>();
  for (const c of characters) {
    const key = `${c.source}\t${c.alphabet}`;
    perAlphabet.set(key, (perAlphabet.get(key) ?? 0) + 1);
  }
  for (const source of ['background', 'evaluation'] as const) {
    const expected = OMNIGLOT_ALPHABETS[source];
    const present = [...perAlphabet.keys()].filter((k) => k.startsWith(`${source}\t`)).map((k) => k.slice(source.length + 1));
    const expectedCharacters = Object.values(expected).reduce((a, b) => a + b, 0);
    const foundCharacters = characters.filter((c) => c.source === source).length;
    if (present.length !== Object.keys(expected).length || foundCharacters !== expectedCharacters) {
      report.push(
        `images_${source}: ${present.length} alphabets and ${foundCharacters} characters, expected ${Object.keys(expected).length} and ${expectedCharacters}`,
      );
    }
    for (const alphabet of Object.keys(expected).sort(compareCodePoints)) {
      if (!perAlphabet.has(`${source}\t${alphabet}`)) report.push(`missing alphabet: images_${source}/${alphabet}`);
    }
    for (const alphabet of present) {
      const want = expected[alphabet];
      const got = perAlphabet.get(`${source}\t${alphabet}`)!;
      if (want === undefined) report.push(`unknown alphabet (not in the Omniglot release): images_${source}/${alphabet}, ${got} characters`);
      else if (got !== want) report.push(`images_${source}/${alphabet}: ${got} characters, expected ${want}`);
    }
  }
  const odd = characters.filter((c) => c.images.length !== OMNIGLOT_IMAGES_PER_CHARACTER);
  for (const c of odd.slice(0, 20)) {
    report.push(`images_${c.source}/${c.name}: ${c.images.length} images, expected ${OMNIGLOT_IMAGES_PER_CHARACTER}`);
  }
  if (odd.length > 20) report.push(`... and ${odd.length - 20} more characters without ${OMNIGLOT_IMAGES_PER_CHARACTER} images`);
  const total = characters.length;
  if (total !== 1623) report.push(`${total} characters in all, expected 1623 (964 background + 659 evaluation)`);
}
