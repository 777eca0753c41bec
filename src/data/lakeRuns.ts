// The 20 one-shot classification runs of Lake et al. (2015): each run is a fixed 20-way
// 1-shot task (runNN/training/classMM.png, runNN/test/itemMM.png, and class_labels.txt
// lines `runNN/test/itemMM.png runNN/training/classKK.png` naming the right class).
// Images go through the same decode pipeline as the cache (strokes dark, invert: true).
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { compareCodePoints } from './omniglotLayout.js';
import { decodeOmniglotImage, OMNIGLOT_SIZE } from './omniglotPrepare.js';

export interface LakeRun {
  name: string; // runNN
  /** One image per class, [classes, 28*28] uint8, class order = classMM sorted. */
  training: Uint8Array;
  /** [items, 28*28] uint8, item order = itemMM sorted. */
  test: Uint8Array;
  /** For each test item, the index of its correct training class. */
  testLabels: Int32Array;
  trainingFiles: string[];
  testFiles: string[];
}

const IMAGE_BYTES = OMNIGLOT_SIZE * OMNIGLOT_SIZE;

async function listPngs(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    throw new Error(`${dir} is missing: a Lake run needs training/classMM.png and test/itemMM.png`);
  }
  const pngs = names.filter((n) => n.toLowerCase().endsWith('.png') && !n.startsWith('.')).sort(compareCodePoints);
  if (pngs.length === 0) throw new Error(`${dir} has no .png images`);
  return pngs;
}

async function decodeAll(dir: string, names: string[]): Promise<Uint8Array> {
  const out = new Uint8Array(names.length * IMAGE_BYTES);
  await Promise.all(
    names.map(async (name, i) => {
      const file = path.join(dir, name);
      try {
        out.set(await decodeOmniglotImage(file), i * IMAGE_BYTES);
      } catch (err) {
        throw new Error(`${file}: cannot decode (${(err as Error).message})`);
      }
    }),
  );
  return out;
}

async function loadRun(root: string, name: string): Promise<LakeRun> {
  const runDir = path.join(root, name);
  const trainingDir = path.join(runDir, 'training');
  const testDir = path.join(runDir, 'test');
  const trainingNames = await listPngs(trainingDir);
  const testNames = await listPngs(testDir);
  const labelsFile = path.join(runDir, 'class_labels.txt');
  let text: string;
  try {
    text = await fs.readFile(labelsFile, 'utf8');
  } catch {
    throw new Error(`${labelsFile} is missing: each run needs its answer key`);
  }
  const trainingIndex = new Map(trainingNames.map((n, i) => [n, i]));
  const testIndex = new Map(testNames.map((n, i) => [n, i]));
  const testLabels = new Int32Array(testNames.length).fill(-1);
  text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .forEach((line, lineNo) => {
      const parts = line.split(/\s+/);
      const where = `${labelsFile}:${lineNo + 1}`;
      if (parts.length !== 2) throw new Error(`${where}: expected 'runNN/test/itemMM.png runNN/training/classKK.png', got '${line}'`);
      for (const [p, folder] of [[parts[0]!, 'test'], [parts[1]!, 'training']] as const) {
        if (p.includes('/') && path.posix.dirname(p) !== `${name}/${folder}`) {
          throw new Error(`${where}: ${p} is not in ${name}/${folder}/ (a label line from another run?)`);
        }
      }
      const item = testIndex.get(path.posix.basename(parts[0]!));
      const cls = trainingIndex.get(path.posix.basename(parts[1]!));
      if (item === undefined) throw new Error(`${where}: test image ${parts[0]} is not in ${testDir}`);
      if (cls === undefined) throw new Error(`${where}: training image ${parts[1]} is not in ${trainingDir}`);
      testLabels[item] = cls;
    });
  const unlabelled = testNames.filter((_, i) => testLabels[i] === -1);
  if (unlabelled.length > 0) throw new Error(`${labelsFile} gives no class for ${unlabelled.join(', ')}`);
  const [training, test] = [await decodeAll(trainingDir, trainingNames), await decodeAll(testDir, testNames)];
  return {
    name,
    training,
    test,
    testLabels,
    trainingFiles: trainingNames.map((n) => `${name}/training/${n}`),
    testFiles: testNames.map((n) => `${name}/test/${n}`),
  };
}

/** Loads every runNN folder under `dir` (the unpacked all_runs.zip), sorted by name. */
export async function loadLakeRuns(dir: string): Promise<LakeRun[]> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    throw new Error(`${dir} does not exist: pass the folder of Lake's one-shot runs (the unpacked all_runs.zip with run01..run20)`);
  }
  const runs = names.filter((n) => /^run\d+$/.test(n)).sort(compareCodePoints);
  if (runs.length === 0) throw new Error(`${dir} has no runNN folders: pass the unpacked all_runs.zip`);
  const out: LakeRun[] = [];
  for (const run of runs) out.push(await loadRun(dir, run));
  return out;
}
