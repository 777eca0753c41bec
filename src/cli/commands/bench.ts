// `maml-native bench order`: the timing and memory table of the paper's settings in both
// orders (src/bench/order.ts does the measuring; this file only maps flags).
import type { CommandModule } from 'yargs';
import { formatOrderBench, runOrderBench, type BenchDevice } from '../../bench/order.js';
import { BENCH_SETTINGS } from '../../bench/settings.js';

const benchOrderCommand: CommandModule = {
  command: 'order',
  describe: 'seconds per meta-iteration, images/s, GFLOP/s (and % of the GEMM ceiling), peak memory and workspace of the paper\'s six settings, first vs second order, plus an inner-step sweep; Markdown on stdout, JSON and a PNG in the run folder',
  builder: (y) =>
    y
      .option('device', { type: 'string', choices: ['cpu', 'cuda'], default: 'cpu', describe: 'where to run: cpu, or cuda (the CUDA backend; needs a build with nvcc and a device)' })
      .option('settings', { type: 'array', string: true, describe: `all, or names: ${BENCH_SETTINGS.map((s) => s.name).join(', ')} (default all; with --quick omniglot-5w1s and miniimagenet-5w1s)` })
      .option('quick', { type: 'boolean', default: false, describe: 'smoke check in under two minutes: 3 repeats after 1 warm-up, two settings, sweep at 1/2/5 steps on one setting' })
      .option('tiny', { type: 'boolean', default: false, describe: 'an omniglot-like network on 8x8 images with 4 filters everywhere (tests; runs in seconds)' })
      .option('out', { type: 'string', describe: 'run folder for the JSON, Markdown and PNG (default runs/bench-<timestamp>)' })
      .option('repeats', { type: 'number', describe: 'timed iterations per measurement (default 10, fewer but not under 5 where the first iteration says 10 would pass 90 s; quick 3; the sweep 3, quick 2)' })
      .option('warmup', { type: 'number', describe: 'untimed iterations first (default 2; quick 1)' })
      .option('sweep-steps', { type: 'array', number: true, describe: 'inner steps of the sweep (default 1 2 5 10 20, plus 40 where it fits; quick 1 2 5)' })
      .option('sweep', { type: 'boolean', default: true, describe: 'run the inner-step sweep (--no-sweep to skip it)' })
      .option('progress', { type: 'boolean', default: true, describe: 'show progress on stderr' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    for (const [flag, v] of [['repeats', args.repeats], ['warmup', args.warmup]] as const) {
      if (v !== undefined && !(Number.isInteger(v) && v >= (flag === 'repeats' ? 1 : 0))) throw new Error(`--${flag}: expected a whole number${flag === 'repeats' ? ' >= 1' : ''}, got ${v}`);
    }
    const sweepSteps = args.sweepSteps as number[] | undefined;
    if (sweepSteps?.some((s) => !(Number.isInteger(s) && s >= 1))) throw new Error(`--sweep-steps: expected whole numbers >= 1, got ${sweepSteps.join(' ')}`);
    const result = await runOrderBench({
      device: args.device as BenchDevice, settings: args.settings as string[] | undefined, quick: args.quick, tiny: args.tiny,
      out: args.out, repeats: args.repeats, warmup: args.warmup, sweepSteps, sweep: args.sweep, progress: args.progress,
    });
    process.stdout.write(`${formatOrderBench(result)}\n`);
  },
};

export const benchCommand: CommandModule = {
  command: 'bench',
  describe: 'measure the engine: `bench order` times first against second order on the paper\'s settings',
  builder: (y) => y.command(benchOrderCommand).demandCommand(1, 'Give a bench: `maml-native bench order`.'),
  handler: () => {},
};
