// The Ravi & Larochelle (2017) class split of MiniImagenet, read back from a prepared cache:
// prepare stores each class with group 'train' | 'val' | 'test' from the csv that lists it,
// so the split is fixed by the csvs (no seed) and only has to be collected and fingerprinted.
import { createHash } from 'node:crypto';
import type { CacheIndex } from './imageCache.js';

// The same manifest shape as Omniglot's splits, so the trainer treats every data set alike.
export type { SplitManifest } from './omniglotSplits.js';
import type { SplitManifest } from './omniglotSplits.js';

export const MINI_IMAGENET_PROTOCOL = 'ravi-larochelle-2017';

/**
 * Classes per split (counts.train/val/test) and images per split (counts.trainImages, ...).
 * Throws when a class has another group, or when a split is empty.
 */
export function miniImagenetSplit(index: CacheIndex): SplitManifest {
  const split: Record<'train' | 'val' | 'test', number[]> = { train: [], val: [], test: [] };
  const images: Record<'train' | 'val' | 'test', number> = { train: 0, val: 0, test: 0 };
  index.classes.forEach((c, i) => {
    if (c.group !== 'train' && c.group !== 'val' && c.group !== 'test') {
      throw new Error(`class ${c.name} (#${i}) of the ${index.dataset} cache has group ${JSON.stringify(c.group)}; expected train, val or test. Re-run prepare miniimagenet.`);
    }
    split[c.group].push(i);
    images[c.group] += c.count;
  });
  for (const name of ['train', 'val', 'test'] as const) {
    if (split[name].length === 0) {
      throw new Error(`the ${index.dataset} cache has no ${name} classes; re-run prepare miniimagenet with all three csvs (train.csv, val.csv, test.csv)`);
    }
  }
  const names = (ids: number[]): string[] => ids.map((i) => index.classes[i].name);
  const hash = createHash('sha256')
    .update(JSON.stringify({ train: names(split.train), val: names(split.val), test: names(split.test) }))
    .digest('hex');
  return {
    dataset: index.dataset,
    protocol: MINI_IMAGENET_PROTOCOL,
    seed: 0,
    train: split.train,
    val: split.val,
    test: split.test,
    hash,
    counts: {
      train: split.train.length,
      val: split.val.length,
      test: split.test.length,
      trainImages: images.train,
      valImages: images.val,
      testImages: images.test,
    },
  };
}
