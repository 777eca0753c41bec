import type { CommandModule } from 'yargs';
import path from 'node:path';
import { evaluate, formatEvaluation } from '../../eval/evaluate.js';
import { createProgress } from '../../report/progress.js';
import { evaluateWithOnnx, formatOnnxEvaluation } from '../../eval/onnxEvaluate.js';
import { formatComparison } from '../../sinusoid/compare.js';
import { evaluateLakeRuns, formatLakeRuns } from '../../eval/lakeRuns.js';
import { writeFileAtomic } from '../../io/atomicFile.js';

export const evalCommand: CommandModule = {
  command: 'eval',
  describe: 'adapt on seeded test tasks and report accuracy for inner steps 0..S with std and 95% CI (the paper\'s table)',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', demandOption: true, describe: 'run folder (or its checkpoint.safetensors); never modified' })
      .option('data', { type: 'string', describe: 'data folder holding the prepared caches (default: the one the run used)' })
      .option('tasks', { type: 'number', default: 600, describe: 'test tasks (the original: 600)' })
      .option('steps', { type: 'number', describe: 'inner steps at test time (default: the run\'s, 10 in the paper)' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the test tasks' })
      .option('split', { type: 'string', choices: ['test', 'val'], default: 'test', describe: 'which classes to draw tasks from' })
      .option('test-queries', { type: 'string', default: 'standard', describe: 'query images per class: standard (15 for miniimagenet, K for omniglot), paper (K, as the original code; wide intervals), or a number' })
      .option('json', { type: 'string', describe: 'also write the table as JSON: rows of {step, mean, std, ci95} (fractions) plus the configuration' })
      .option('csv', { type: 'string', describe: 'also write the table as CSV' })
      .option('lake-runs', { type: 'string', describe: 'evaluate on Lake et al.\'s 20 fixed 20-way 1-shot runs in this folder (runNN/...) instead of sampled tasks; needs a 20-way model trained with --split background' })
      .option('engine', { type: 'string', choices: ['native', 'onnx'], default: 'native', describe: 'native: the engine adapts and classifies; onnx: each adapted network is exported and its query images classified by onnxruntime-node, reported beside the native result' })
      .option('bn', { type: 'string', choices: ['support', 'batch'], default: 'batch', describe: 'with --engine onnx: batch = statistics of the query batch in the graph (as native; agrees task by task), support = statistics of the support set frozen (single-image inference)' })
      .option('provider', { type: 'string', choices: ['cpu', 'cuda'], default: 'cpu', describe: 'with --engine onnx: onnxruntime execution provider (cuda falls back to cpu with a notice)' })
      .option('shots', { type: 'number', describe: 'sinusoid: K support and K query points per test task (default: the run\'s K)' })
      .option('compare', { type: 'string', describe: 'sinusoid: a second run (e.g. the pretrained baseline) evaluated on the same test tasks; one table side by side (--json then holds both)' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    const testQueries = args.testQueries === 'standard' || args.testQueries === 'paper' ? args.testQueries : Number(args.testQueries);
    if (typeof testQueries === 'number' && !(Number.isInteger(testQueries) && testQueries > 0)) {
      throw new Error(`--test-queries: expected standard, paper or a whole number, got ${args.testQueries}`);
    }
    let progress: ReturnType<typeof createProgress> | undefined;
    const common = {
      data: args.data && path.resolve(args.data), tasks: args.tasks, steps: args.steps, seed: args.seed, split: args.split,
      testQueries: args.testQueries === 'standard' ? undefined : testQueries, shots: args.shots,
    };
    if (args.lakeRuns) {
      const r = await evaluateLakeRuns({ checkpoint: path.resolve(args.checkpoint), runs: path.resolve(args.lakeRuns), steps: args.steps });
      process.stdout.write(`${formatLakeRuns(r)}\n`);
      if (args.json) writeFileAtomic(args.json, `${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    if (args.engine === 'onnx') {
      const r = await evaluateWithOnnx({
        checkpoint: path.resolve(args.checkpoint), data: args.data && path.resolve(args.data), tasks: args.tasks, steps: args.steps,
        seed: args.seed, batchNorm: args.bn, provider: args.provider, testQueries,
        onProgress: (done, total) => {
          progress ??= createProgress({ total, label: 'eval (onnx)' });
          progress.update(done);
        },
      });
      progress?.stop();
      process.stdout.write(`${formatOnnxEvaluation(r)}\n`);
      if (args.json) writeFileAtomic(args.json, `${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    if (args.compare) {
      const results = [];
      for (const checkpoint of [args.checkpoint, args.compare]) results.push(await evaluate({ ...common, checkpoint: path.resolve(checkpoint) }));
      process.stdout.write(`${formatComparison(results)}\n`);
      if (args.json) {
        writeFileAtomic(args.json, `${JSON.stringify(results.map((r) => ({ configuration: r.configuration, metric: r.metric, rows: r.rows })), null, 2)}\n`);
        process.stdout.write(`wrote ${args.json}\n`);
      }
      return;
    }
    const result = await evaluate({
      checkpoint: path.resolve(args.checkpoint), data: args.data && path.resolve(args.data), tasks: args.tasks, steps: args.steps,
      seed: args.seed, split: args.split, testQueries, json: args.json, csv: args.csv, shots: args.shots,
      onProgress: (done, total) => {
        progress ??= createProgress({ total, label: 'eval' });
        progress.update(done);
      },
    });
    progress?.stop();
    process.stdout.write(`${formatEvaluation(result)}\n`);
    if (args.json) process.stdout.write(`wrote ${args.json}\n`);
  },
};
