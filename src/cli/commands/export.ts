import type { CommandModule } from 'yargs';
import path from 'node:path';
import { exportModel } from '../../commands/export.js';
import { predict, formatPredictions } from '../../onnx/predict.js';

export const exportCommand: CommandModule = {
  command: 'export',
  describe: 'adapt the meta-learned network to your own labelled images and write it as ONNX (IR 8, opset 17)',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', demandOption: true, describe: 'run folder or checkpoint.safetensors' })
      .option('support', { type: 'string', describe: 'folder with one sub-folder of images per class (png, jpg, webp, gif, tif, bmp); preprocessed as the checkpoint\'s data set (omniglot: greyscale 28x28, inverted; miniimagenet: RGB 84x84)' })
      .option('steps', { type: 'number', describe: 'inner steps of adaptation (default: the run\'s test steps, 10 in the paper)' })
      .option('adapt', { type: 'boolean', default: true, describe: 'adapt on --support first; --no-adapt exports the meta-learned initialisation itself' })
      .option('bn', { type: 'string', choices: ['support', 'batch'], default: 'support', describe: 'support: batch-norm statistics of the support set after adaptation, frozen (one image\'s prediction does not depend on others); batch: statistics of each input batch computed in the graph (exactly the training-time behaviour)' })
      .option('out', { type: 'string', demandOption: true, describe: 'the .onnx file to write (written only when everything succeeded)' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const r = await exportModel({ checkpoint: path.resolve(args.checkpoint), support: args.support, steps: args.steps, adapt: args.adapt, batchNorm: args.bn, out: path.resolve(args.out) });
    process.stdout.write(`wrote ${r.out}: ${r.classNames.length} classes (${r.classNames.join(', ')}), ${r.supportImages ? `adapted ${r.steps} steps on ${r.supportImages} images` : 'meta-learned initialisation (not adapted)'}, batch norm '${r.batchNorm}'\n`);
  },
};

export const predictCommand: CommandModule = {
  command: 'predict <images..>',
  describe: 'classify images with an exported ONNX model (onnxruntime-node), printing class and probabilities',
  builder: (y) =>
    y
      .positional('images', { type: 'string', array: true, describe: 'image files' })
      .option('model', { type: 'string', demandOption: true, describe: 'the .onnx file written by export' })
      .option('provider', { type: 'string', choices: ['cpu', 'cuda'], default: 'cpu', describe: 'execution provider (cuda falls back to cpu with a notice)' })
      .option('json', { type: 'boolean', default: false, describe: 'print JSON instead of a table' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const results = await predict({ model: path.resolve(args.model), images: (args.images as string[]).map((f) => path.resolve(f)), provider: args.provider });
    process.stdout.write(args.json ? `${JSON.stringify(results, null, 2)}\n` : `${formatPredictions(results)}\n`);
  },
};
