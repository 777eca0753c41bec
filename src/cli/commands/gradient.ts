import type { CommandModule } from 'yargs';
import { computeGradient } from '../../commands/gradient.js';
import type { LossReduction } from '../../model/lossReduction.js';
import { engineOptionsFromFlags, withEngineFlags } from '../engineFlags.js';

export const gradientCommand: CommandModule = {
  command: 'gradient',
  describe: 'compute one meta-gradient from safetensors files (to check the engine against another framework)',
  builder: (y) =>
    withEngineFlags(y)
      .option('params', { type: 'string', describe: 'safetensors with the parameters (names as `conv1.weight`, ..., `head.bias`); absent: the seeded initialisation' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the initialisation when --params is absent' })
      .option('task', { type: 'string', demandOption: true, describe: 'safetensors with support.images [T,S,C,H,W] or [S,C,H,W] float32, support.labels int64/int32, query.images, query.labels' })
      .option('order', { type: 'number', choices: [1, 2], default: 2, describe: '1 = first-order MAML (gradient at the adapted weights), 2 = exact second order' })
      .option('steps', { type: 'number', default: 1, describe: 'inner SGD steps K' })
      .option('inner-lr', { type: 'number', default: 0.4, describe: 'inner step size alpha' })
      .option('loss-reduction', { type: 'string', choices: ['mean', 'sum-over-shots'], default: 'sum-over-shots', describe: 'mean over examples, or the original\'s sum divided by the shots K (alpha 0.4 there = alpha 2.0 with mean for 5 ways)' })
      .option('out', { type: 'string', demandOption: true, describe: 'where to write the meta-gradient (safetensors, same names as the parameters)' })
      .demandOption(['arch', 'ways']),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const summary = await computeGradient({
      engine: engineOptionsFromFlags(args, { arch: 'omniglot', ways: 5 }),
      params: args.params, seed: args.seed, task: args.task, order: args.order, steps: args.steps,
      innerLr: args.innerLr, lossReduction: args.lossReduction as LossReduction, out: args.out,
    });
    process.stdout.write(`wrote ${summary.out}: meta-gradient of ${summary.tasks} task(s), norm ${summary.gradientNorm.toPrecision(6)}, query loss after adaptation ${summary.queryLossAfter.map((l) => l.toFixed(4)).join(', ')}\n`);
  },
};
