import type { CommandModule } from 'yargs';
import path from 'node:path';
import { sinusoidReport } from '../../sinusoid/report.js';

export const sinusoidCommand: CommandModule = {
  command: 'sinusoid-report',
  describe: 'sinusoid regression: evaluate a MAML run and the pretrained baseline (train --dataset sinusoid [--baseline pretrained]) on the same test tasks for each K; writes the MSE table (txt, md, json) and the paper\'s Figures 2 and 3 (left) as PNG',
  builder: (y) =>
    y
      .option('maml', { type: 'string', demandOption: true, describe: 'the MAML run folder (or checkpoint)' })
      .option('baseline', { type: 'string', demandOption: true, describe: 'the pretrained-baseline run folder (train --dataset sinusoid --baseline pretrained)' })
      .option('shots', { type: 'string', default: '5,10', describe: 'K support (and query) points per test task, comma separated' })
      .option('tasks', { type: 'number', default: 600, describe: 'test tasks per K' })
      .option('steps', { type: 'number', default: 10, describe: 'gradient steps at test time' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the test tasks' })
      .option('plot-tasks', { type: 'number', default: 3, describe: 'test tasks drawn in the fits figure' })
      .option('out', { type: 'string', demandOption: true, describe: 'folder for table-K*.txt, eval-K*.json, table.md, fits-K*.png, mse-vs-steps-K*.png' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const shots = String(args.shots).split(',').map((s) => Number(s.trim()));
    if (shots.some((k) => !(Number.isInteger(k) && k > 0))) throw new Error(`--shots: expected whole numbers like 5,10, got ${args.shots}`);
    const report = await sinusoidReport({
      runs: [path.resolve(args.maml), path.resolve(args.baseline)], shots, tasks: args.tasks, steps: args.steps, seed: args.seed,
      plotTasks: args.plotTasks, out: path.resolve(args.out), onProgress: (w) => process.stderr.write(`${w}\n`),
    });
    process.stdout.write(`${report.text}\n\nwrote:\n${report.files.map((f) => `  ${f}`).join('\n')}\n`);
  },
};
