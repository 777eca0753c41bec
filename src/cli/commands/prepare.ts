import type { CommandModule } from 'yargs';
import path from 'node:path';
import { prepareOmniglot } from '../../data/omniglotPrepare.js';
import { prepareMiniImagenet } from '../../data/miniImagenetPrepare.js';
import { omniglotSplit, formatSplitManifest } from '../../data/omniglotSplits.js';
import { miniImagenetSplit } from '../../data/miniImagenetSplits.js';
import { createProgress } from '../../report/progress.js';
import { defaultDataDir } from '../../train/config.js';

export const prepareCommand: CommandModule = {
  command: 'prepare <dataset>',
  describe: 'decode a data set once into the compact cache that training reads (uint8 pixels + a JSON index)',
  builder: (y) =>
    y
      .positional('dataset', { choices: ['omniglot', 'miniimagenet'], describe: 'which data set' })
      .option('src', { type: 'string', demandOption: true, describe: 'where the images are. omniglot: the folder with images_background.zip / images_evaluation.zip, the zips, their unpacked folders, or any folder above them. miniimagenet: the images/ folder of the common download, WNID/ class folders, or {train,val,test}/WNID/' })
      .option('splits', { type: 'string', describe: 'miniimagenet: the folder with the Ravi-Larochelle train.csv, val.csv, test.csv (default: looked for in --src)' })
      .option('out', { type: 'string', describe: 'data folder to write the cache into (default: $MAML_DATA or ./data)' })
      .option('skip-bad', { type: 'boolean', default: false, describe: 'miniimagenet: skip files that cannot be decoded (listed in the report) instead of stopping' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const out = path.resolve(args.out ?? defaultDataDir());
    let progress: ReturnType<typeof createProgress> | undefined;
    const onProgress = (done: number, total: number) => {
      progress ??= createProgress({ total, label: `prepare ${args.dataset}` });
      progress.update(done);
    };
    const started = Date.now();
    const result = args.dataset === 'omniglot'
      ? await prepareOmniglot({ src: path.resolve(args.src), out, onProgress })
      : await prepareMiniImagenet({ src: path.resolve(args.src), splits: args.splits && path.resolve(args.splits), out, skipBad: args.skipBad, onProgress });
    progress?.stop();
    for (const line of result.report) process.stdout.write(`  ${line}\n`);
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    process.stdout.write(result.alreadyPrepared
      ? `${result.cacheDir} is already prepared from the same sources (checksum ${result.index.sourceChecksum.slice(0, 16)}): nothing to do\n`
      : `wrote ${result.cacheDir}: ${result.index.count} images of ${result.index.classes.length} classes, ${result.index.imageShape.join('x')} each, in ${seconds} s\n`);
    if (args.dataset === 'omniglot') process.stdout.write(`${formatSplitManifest(omniglotSplit(result.index, 'paper'))}\n`);
    else {
      const s = miniImagenetSplit(result.index);
      process.stdout.write(`split ${s.protocol}: ${s.train.length} train / ${s.val.length} val / ${s.test.length} test classes, sha256 ${s.hash.slice(0, 16)}\n`);
    }
  },
};
