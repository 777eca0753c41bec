// Class splits for Omniglot.
//
// 'paper': as the original MAML data script (random.seed(1); shuffle the 1623 characters;
// 1200 for meta-training of which the last 100 are validation; the rest test). Python's
// Mersenne-Twister shuffle cannot be matched bit for bit without reimplementing CPython's
// random, so the split has the same sizes and construction, not the same members: the
// characters are sorted by name (code point) and shuffled with Fisher-Yates driven by
// pure-rand's xoroshiro128+ seeded with `seed`; first 1100 train, next 100 val, 423 test.
//
// 'background': Lake's protocol: train on images_background (a seeded 10% held out as
// validation), test on images_evaluation.
import { createHash } from 'node:crypto';
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import type { CacheIndex } from './imageCache.js';
import { compareCodePoints } from './omniglotLayout.js';

export type OmniglotProtocol = 'paper' | 'background';

export interface SplitManifest {
  dataset: string;
  protocol: string;
  seed: number;
  /** Indices into index.classes. */
  train: number[];
  val: number[];
  test: number[];
  /** sha256 of the three class-name lists. */
  hash: string;
  counts: { train: number; val: number; test: number; trainImages: number; valImages: number; testImages: number };
}

export const PAPER_TRAIN = 1100;
export const PAPER_VAL = 100;

/** In-place Fisher-Yates (Durstenfeld) shuffle: for i from n-1 down to 1, swap a[i] with a[j], j uniform in [0, i]. */
export function fisherYatesShuffle<T>(items: T[], seed: number): T[] {
  const rng = xoroshiro128plus(seed);
  for (let i = items.length - 1; i > 0; i--) {
    const j = uniformInt(rng, 0, i);
    const t = items[i]!;
    items[i] = items[j]!;
    items[j] = t;
  }
  return items;
}

function byName(index: CacheIndex, ids: number[]): number[] {
  return ids.sort((a, b) => compareCodePoints(index.classes[a]!.name, index.classes[b]!.name));
}

export function omniglotSplit(index: CacheIndex, protocol: OmniglotProtocol, seed = 1): SplitManifest {
  if (!Number.isInteger(seed)) throw new Error(`omniglotSplit: seed must be an integer, got ${seed}`);
  const all = index.classes.map((_, i) => i);
  let train: number[];
  let val: number[];
  let test: number[];
  if (protocol === 'paper') {
    if (all.length <= PAPER_TRAIN + PAPER_VAL) {
      throw new Error(
        `omniglotSplit('paper'): the cache has ${all.length} classes, but the paper split needs more than ${PAPER_TRAIN + PAPER_VAL} (1623 in the full set); re-run prepare on the full data`,
      );
    }
    const shuffled = fisherYatesShuffle(byName(index, all), seed);
    train = shuffled.slice(0, PAPER_TRAIN);
    val = shuffled.slice(PAPER_TRAIN, PAPER_TRAIN + PAPER_VAL);
    test = shuffled.slice(PAPER_TRAIN + PAPER_VAL);
  } else if (protocol === 'background') {
    const background = byName(index, all.filter((i) => index.classes[i]!.source === 'background'));
    test = byName(index, all.filter((i) => index.classes[i]!.source === 'evaluation'));
    if (background.length < 2 || test.length === 0) {
      throw new Error(
        `omniglotSplit('background'): needs classes from both images_background and images_evaluation, found ${background.length} and ${test.length}`,
      );
    }
    const shuffled = fisherYatesShuffle(background, seed);
    const valCount = Math.max(1, Math.round(shuffled.length / 10));
    val = shuffled.slice(0, valCount);
    train = shuffled.slice(valCount);
  } else {
    throw new Error(`omniglotSplit: protocol must be 'paper' or 'background', got ${JSON.stringify(protocol)}`);
  }
  const names = (ids: number[]): string[] => ids.map((i) => index.classes[i]!.name);
  const hash = createHash('sha256')
    .update(JSON.stringify({ train: names(train), val: names(val), test: names(test) }))
    .digest('hex');
  const images = (ids: number[]): number => ids.reduce((s, i) => s + index.classes[i]!.count, 0);
  return {
    dataset: index.dataset,
    protocol,
    seed,
    train,
    val,
    test,
    hash,
    counts: {
      train: train.length,
      val: val.length,
      test: test.length,
      trainImages: images(train),
      valImages: images(val),
      testImages: images(test),
    },
  };
}

export function formatSplitManifest(m: SplitManifest): string {
  const c = m.counts;
  return [
    `split ${m.dataset}/${m.protocol} seed=${m.seed} hash=${m.hash.slice(0, 16)}`,
    `  train ${c.train} classes (${c.trainImages} images)`,
    `  val   ${c.val} classes (${c.valImages} images)`,
    `  test  ${c.test} classes (${c.testImages} images)`,
  ].join('\n');
}
