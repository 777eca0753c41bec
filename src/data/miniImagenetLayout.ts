// Finds the MiniImagenet images the user has and matches them against the Ravi &
// Larochelle split csvs (train.csv, val.csv, test.csv: `filename,label`). Three layouts:
//   flat          SRC/images/n0153282900000005.jpg (the common download) or the files in SRC itself
//   class-folders SRC/WNID/FILE (ImageNet style, any resolution)
//   split-folders SRC/{train,val,test}/WNID/FILE (already split, e.g. a subset of 60 per class)
// The csvs always decide split and label; folders only say where a file lies. Class folders
// holding the original ILSVRC names (WNID_12345.JPEG) are matched by the rule of
// mini-imagenet-tools: csv name WNID0000NNNN is the NNNN-th file of the class in numeric order.
// Only node:fs and node:path, listings sorted in code point order, so it runs the same everywhere.
import * as fs from 'node:fs';
import * as path from 'node:path';

export type MiniImagenetSplitName = 'train' | 'val' | 'test';
export const MINI_IMAGENET_SPLITS: readonly MiniImagenetSplitName[] = ['train', 'val', 'test'];
/** Classes per split in the Ravi & Larochelle protocol, and images per class. */
export const RAVI_CLASS_COUNTS: Record<MiniImagenetSplitName, number> = { train: 64, val: 16, test: 20 };
export const RAVI_IMAGES_PER_CLASS = 600;

export type MiniImagenetLayoutKind = 'flat' | 'class-folders' | 'split-folders';

export interface MiniImagenetCsv {
  split: MiniImagenetSplitName;
  path: string;
  /** The file's text, byte for byte as read (part of the source checksum). */
  text: string;
  rows: { filename: string; label: string }[];
}

export interface MiniImagenetImage {
  /** The csv file name (what the cache index records). */
  file: string;
  /** Absolute path of the image on disk. */
  path: string;
  /** Path relative to the source root, with '/' separators. */
  relative: string;
}

export interface MiniImagenetClassPlan {
  name: string;
  split: MiniImagenetSplitName;
  /** File name of the csv that lists the class (train.csv, ...). */
  source: string;
  /** Rows of the csv for this class. */
  expected: number;
  /** Images found, in csv order. */
  images: MiniImagenetImage[];
  /** csv file names not found on disk. */
  missing: string[];
}

export interface MiniImagenetLayout {
  kind: MiniImagenetLayoutKind;
  root: string;
  csvs: MiniImagenetCsv[];
  /** train classes in csv order of first appearance, then val, then test. */
  classes: MiniImagenetClassPlan[];
  /** Human-readable findings, one line each. */
  report: string[];
  /** Image files on disk that no csv lists (relative paths, sorted). */
  extra: string[];
}

const IMAGE_EXTENSION = /\.(jpe?g|png|webp|tiff?|bmp|gif)$/i;
const WNID = /^n\d{8}$/;
const RAVI_NAME = /^(n\d{8})(\d{8})\.[A-Za-z]+$/;
const ILSVRC_NAME = /^(n\d{8})_(\d+)\.[A-Za-z]+$/;

/** Code point order (UTF-16 code unit order differs for astral characters). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const surrogateX = x >= 0xd800 && x <= 0xdfff;
    const surrogateY = y >= 0xd800 && y <= 0xdfff;
    if (surrogateX !== surrogateY) return surrogateX ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

function sortedEntries(dir: string): fs.Dirent[] {
  return fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => compareCodePoints(a.name, b.name));
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(entry: fs.Dirent, dir: string): boolean {
  if (entry.isFile()) return true;
  if (!entry.isSymbolicLink()) return false;
  try {
    return fs.statSync(path.join(dir, entry.name)).isFile();
  } catch {
    return false;
  }
}

function isDir(entry: fs.Dirent, dir: string): boolean {
  if (entry.isDirectory()) return true;
  return entry.isSymbolicLink() && isDirectory(path.join(dir, entry.name));
}

function listShort(names: string[], max = 5): string {
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown}, ... (${names.length} in all)` : shown;
}

/** Parses a Ravi split csv (`filename,label` header); throws with the path and line on bad rows. */
export function parseSplitCsv(csvPath: string, split: MiniImagenetSplitName): MiniImagenetCsv {
  const text = fs.readFileSync(csvPath, 'utf8');
  const lines = text.split(/\r?\n/);
  const header = (lines[0] ?? '').replace(/^\uFEFF/, '').trim();
  if (header !== 'filename,label') {
    throw new Error(`${csvPath}: expected the header 'filename,label' of the Ravi split csvs, got ${JSON.stringify(header)}`);
  }
  const rows: { filename: string; label: string }[] = [];
  const seen = new Set<string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const parts = line.split(',');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new Error(`${csvPath}:${i + 1}: expected 'filename,label', got ${JSON.stringify(line)}`);
    }
    const [filename, label] = parts;
    if (filename.includes('/') || filename.includes('\\')) {
      throw new Error(`${csvPath}:${i + 1}: file name ${JSON.stringify(filename)} must not contain a folder`);
    }
    if (seen.has(filename)) throw new Error(`${csvPath}:${i + 1}: ${filename} is listed twice`);
    seen.add(filename);
    rows.push({ filename, label });
  }
  if (rows.length === 0) throw new Error(`${csvPath}: no rows after the header`);
  return { split, path: csvPath, text, rows };
}

/** Finds the folder holding train.csv, val.csv and test.csv: --splits, else SRC, else one level below SRC. */
export function findSplitCsvDir(src: string, splits?: string): string {
  const hasAll = (dir: string): boolean => MINI_IMAGENET_SPLITS.every((s) => fs.existsSync(path.join(dir, `${s}.csv`)));
  if (splits !== undefined) {
    if (!isDirectory(splits)) throw new Error(`--splits ${splits}: not a folder (expected one holding train.csv, val.csv, test.csv)`);
    const absent = MINI_IMAGENET_SPLITS.filter((s) => !fs.existsSync(path.join(splits, `${s}.csv`)));
    if (absent.length > 0) throw new Error(`--splits ${splits}: ${absent.map((s) => `${s}.csv`).join(', ')} not found there`);
    return splits;
  }
  if (hasAll(src)) return src;
  for (const entry of sortedEntries(src)) {
    if (isDir(entry, src) && hasAll(path.join(src, entry.name))) return path.join(src, entry.name);
  }
  throw new Error(
    `No train.csv, val.csv and test.csv (Ravi & Larochelle split lists, header 'filename,label') in ${src} or a folder just below it; pass --splits DIR`,
  );
}

interface FoundFile {
  path: string;
  relative: string;
  /** Class folder it lies in, when the layout has class folders. */
  folderClass?: string;
  /** Split folder it lies in (split-folders layout). */
  folderSplit?: MiniImagenetSplitName;
}

/** Lists image files of one folder (not recursive), sorted; counts what is not an image. */
function listImages(dir: string, relativeDir: string, ignored: string[]): { name: string; path: string; relative: string }[] {
  const out: { name: string; path: string; relative: string }[] = [];
  for (const entry of sortedEntries(dir)) {
    const relative = relativeDir === '' ? entry.name : `${relativeDir}/${entry.name}`;
    if (isFile(entry, dir) && IMAGE_EXTENSION.test(entry.name)) out.push({ name: entry.name, path: path.join(dir, entry.name), relative });
    else if (!entry.name.endsWith('.csv')) ignored.push(relative);
  }
  return out;
}

function detectKind(src: string): { kind: MiniImagenetLayoutKind; imageDir?: string } {
  const entries = sortedEntries(src);
  const splitDirs = entries.filter((e) => (MINI_IMAGENET_SPLITS as readonly string[]).includes(e.name) && isDir(e, src));
  if (splitDirs.length > 0) {
    const holdsClasses = splitDirs.some((d) => sortedEntries(path.join(src, d.name)).some((e) => isDir(e, path.join(src, d.name))));
    if (holdsClasses) return { kind: 'split-folders' };
  }
  if (entries.some((e) => isDir(e, src) && WNID.test(e.name))) return { kind: 'class-folders' };
  const images = path.join(src, 'images');
  if (isDirectory(images)) {
    const inner = sortedEntries(images);
    if (inner.some((e) => isDir(e, images) && WNID.test(e.name))) return { kind: 'class-folders', imageDir: images };
    return { kind: 'flat', imageDir: images };
  }
  if (entries.some((e) => isFile(e, src) && IMAGE_EXTENSION.test(e.name))) return { kind: 'flat', imageDir: src };
  throw new Error(
    `${src}: no MiniImagenet images found. Expected one of: ${src}/images/*.jpg (flat, with train/val/test.csv), ` +
      `${src}/WNID/*.jpg (class folders, e.g. ${src}/n01532829/), or ${src}/{train,val,test}/WNID/*.jpg`,
  );
}

function relativeTo(root: string, p: string): string {
  return path.relative(root, p).split(path.sep).join('/');
}

/** Collects every image with the folder (class, split) it lies in. */
function collectFiles(src: string, kind: MiniImagenetLayoutKind, imageDir: string | undefined, ignored: string[]): FoundFile[] {
  const found: FoundFile[] = [];
  const classFolders = (dir: string, folderSplit?: MiniImagenetSplitName): void => {
    for (const entry of sortedEntries(dir)) {
      const sub = path.join(dir, entry.name);
      if (!isDir(entry, dir)) {
        if (!entry.name.endsWith('.csv')) ignored.push(relativeTo(src, sub));
        continue;
      }
      for (const image of listImages(sub, relativeTo(src, sub), ignored)) {
        found.push({ path: image.path, relative: image.relative, folderClass: entry.name, folderSplit });
      }
    }
  };
  if (kind === 'flat') {
    const dir = imageDir ?? src;
    for (const image of listImages(dir, relativeTo(src, dir), ignored)) found.push({ path: image.path, relative: image.relative });
  } else if (kind === 'class-folders') {
    classFolders(imageDir ?? src);
  } else {
    for (const split of MINI_IMAGENET_SPLITS) {
      const dir = path.join(src, split);
      if (isDirectory(dir)) classFolders(dir, split);
    }
  }
  return found;
}

/**
 * Detects the layout under SRC, reads the csvs (from SPLITS, SRC or a folder below SRC) and
 * matches every csv row to a file. Throws when a csv class has no image at all (naming the
 * class and the csv), when a class is in two csvs, or when no image is found. Partial classes,
 * extra files and csv/folder disagreements are reported, not fatal.
 */
export function detectMiniImagenetLayout(src: string, splits?: string): MiniImagenetLayout {
  const root = path.resolve(src);
  if (!isDirectory(root)) throw new Error(`--src ${src}: not a folder`);
  const csvDir = findSplitCsvDir(root, splits === undefined ? undefined : path.resolve(splits));
  const csvs = MINI_IMAGENET_SPLITS.map((split) => parseSplitCsv(path.join(csvDir, `${split}.csv`), split));
  const { kind, imageDir } = detectKind(root);
  const report: string[] = [];
  const ignored: string[] = [];
  const files = collectFiles(root, kind, imageDir, ignored);
  report.push(`layout: ${kind} under ${root}${imageDir && imageDir !== root ? ` (images in ${relativeTo(root, imageDir)}/)` : ''}; split csvs from ${csvDir}`);
  if (files.length === 0) throw new Error(`${root}: the ${kind} layout holds no image files`);

  // Which split each class belongs to, from the csvs; a class in two csvs is an error.
  const classSplit = new Map<string, MiniImagenetCsv>();
  for (const csv of csvs) {
    for (const row of csv.rows) {
      const other = classSplit.get(row.label);
      if (other === undefined) classSplit.set(row.label, csv);
      else if (other !== csv) {
        throw new Error(`class ${row.label} is listed in both ${path.basename(other.path)} and ${path.basename(csv.path)} (${csvDir}); the splits must be disjoint`);
      }
    }
  }

  // Index the files by name; the same name in two folders is reported and the first one (sorted) used.
  const byName = new Map<string, FoundFile>();
  const duplicates: string[] = [];
  for (const f of files) {
    const name = path.basename(f.path);
    if (byName.has(name)) duplicates.push(f.relative);
    else byName.set(name, f);
  }
  if (duplicates.length > 0) report.push(`${duplicates.length} file names occur twice; the first (sorted) copy is used, ignored: ${listShort(duplicates)}`);

  // Class folders with original ILSVRC names: the Nth csv image of a class is its Nth file in numeric order.
  const ilsvrcByClass = new Map<string, FoundFile[]>();
  if (kind !== 'flat') {
    for (const f of files) {
      const m = ILSVRC_NAME.exec(path.basename(f.path));
      if (!m || f.folderClass === undefined) continue;
      const list = ilsvrcByClass.get(f.folderClass) ?? [];
      list.push(f);
      ilsvrcByClass.set(f.folderClass, list);
    }
    for (const list of ilsvrcByClass.values()) {
      list.sort((a, b) => Number(ILSVRC_NAME.exec(path.basename(a.path))![2]) - Number(ILSVRC_NAME.exec(path.basename(b.path))![2]));
    }
  }

  const used = new Set<FoundFile>();
  const mismatched: string[] = [];
  const splitMismatch = new Map<string, string>();
  const classes: MiniImagenetClassPlan[] = [];
  let ilsvrcMatches = 0;
  for (const csv of csvs) {
    const source = path.basename(csv.path);
    const plans = new Map<string, MiniImagenetClassPlan>();
    for (const row of csv.rows) {
      let plan = plans.get(row.label);
      if (!plan) {
        plan = { name: row.label, split: csv.split, source, expected: 0, images: [], missing: [] };
        plans.set(row.label, plan);
        classes.push(plan);
      }
      plan.expected++;
      let f = byName.get(row.filename);
      if (f === undefined) {
        const m = RAVI_NAME.exec(row.filename);
        const list = m ? ilsvrcByClass.get(row.label) : undefined;
        if (m && list) {
          const candidate = list[Number(m[2]) - 1];
          if (candidate !== undefined) {
            f = candidate;
            ilsvrcMatches++;
          }
        }
      }
      if (f === undefined || used.has(f)) {
        plan.missing.push(row.filename);
        continue;
      }
      used.add(f);
      if (f.folderClass !== undefined && f.folderClass !== row.label) {
        mismatched.push(`${f.relative} (in ${source} as ${row.label})`);
      }
      if (f.folderSplit !== undefined && f.folderSplit !== csv.split && f.folderClass === row.label) {
        splitMismatch.set(row.label, `${row.label} (folder ${f.folderSplit}/, ${source})`);
      }
      plan.images.push({ file: row.filename, path: f.path, relative: f.relative });
    }
  }
  if (ilsvrcMatches > 0) {
    report.push(`${ilsvrcMatches} images matched by ILSVRC number (csv WNID0000NNNN = NNNN-th WNID_*.JPEG of the class folder in numeric order)`);
  }

  // Counts per split against the csvs and the Ravi protocol.
  for (const csv of csvs) {
    const inSplit = classes.filter((c) => c.split === csv.split);
    const images = inSplit.reduce((n, c) => n + c.images.length, 0);
    const want = RAVI_CLASS_COUNTS[csv.split];
    report.push(
      `${csv.split}: ${inSplit.length} classes (${path.basename(csv.path)}), ${images} of ${csv.rows.length} listed images found` +
        (inSplit.length !== want ? `; note: the Ravi & Larochelle split has ${want} ${csv.split} classes` : ''),
    );
  }

  const empty = classes.filter((c) => c.images.length === 0);
  if (empty.length > 0) {
    const c = empty[0];
    throw new Error(
      `class ${c.name} of ${c.source} (${path.join(csvDir, c.source)}) has none of its ${c.expected} images under ${root}` +
        (empty.length > 1 ? `; ${empty.length} classes are missing in all: ${listShort(empty.map((e) => `${e.name} (${e.source})`))}` : '') +
        `. Check --src, or pass --splits with csvs that list only the classes you have.`,
    );
  }

  // Partial classes: one summary line when every class lacks the same number (a subset), else per class.
  const partial = classes.filter((c) => c.missing.length > 0);
  if (partial.length > 0) {
    const sameShape = partial.length === classes.length && classes.every((c) => c.expected === classes[0].expected && c.missing.length === classes[0].missing.length);
    if (sameShape) {
      const c = classes[0];
      report.push(`${c.missing.length} of ${c.expected} images per class missing in every class: a subset (${c.images.length} per class); continuing`);
    } else {
      report.push(`${partial.length} of ${classes.length} classes are partial; continuing with the images found:`);
      for (const c of partial.slice(0, 20)) {
        report.push(`  ${c.name} (${c.source}): ${c.images.length} of ${c.expected} found, missing ${listShort(c.missing, 3)}`);
      }
      if (partial.length > 20) report.push(`  ... and ${partial.length - 20} more partial classes`);
    }
  }
  const full = classes.filter((c) => c.missing.length === 0 && c.expected !== RAVI_IMAGES_PER_CLASS);
  if (full.length === classes.length) {
    report.push(`note: the csvs list ${listShort([...new Set(classes.map((c) => String(c.expected)))])} images per class (the Ravi split lists ${RAVI_IMAGES_PER_CLASS})`);
  }
  if (mismatched.length > 0) {
    report.push(`csv/folder mismatch: ${mismatched.length} files lie in another class's folder than their csv label; the csv label is used: ${listShort(mismatched)}`);
  }
  if (splitMismatch.size > 0) {
    report.push(`csv/folder mismatch: ${splitMismatch.size} classes lie in another split folder than their csv; the csv split is used: ${listShort([...splitMismatch.values()])}`);
  }

  const extra = files.filter((f) => !used.has(f)).map((f) => f.relative);
  if (extra.length > 0) {
    const extraClasses = [...new Set(files.filter((f) => !used.has(f) && f.folderClass !== undefined && !classSplit.has(f.folderClass)).map((f) => f.folderClass!))];
    report.push(
      `${extra.length} image files are in no csv and are ignored: ${listShort(extra)}` +
        (extraClasses.length > 0 ? `; ${extraClasses.length} class folders not in any csv: ${listShort(extraClasses)}` : ''),
    );
  }
  if (ignored.length > 0) report.push(`${ignored.length} entries that are not images are ignored: ${listShort(ignored)}`);

  return { kind, root, csvs, classes, report, extra };
}
