import type { CommandModule } from 'yargs';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { resolveTrainConfig, type TrainConfig } from '../../train/config.js';
import { train, CHECKPOINT_FILE } from '../../train/trainer.js';
import { readCheckpointConfig } from '../../train/checkpoint.js';
import { PRESETS, type DatasetName } from '../../train/presets.js';
import { createProgress } from '../../report/progress.js';
import { formatSelection, isPretrainedBaseline, pretrainedBaselineConfig, trainPretrainedBaseline } from '../../sinusoid/baseline.js';

export const trainCommand: CommandModule = {
  command: 'train',
  describe: 'meta-train with MAML (presets with the paper\'s hyperparameters; every flag overrides them)',
  builder: (y) =>
    y
      .option('dataset', { type: 'string', choices: ['omniglot', 'miniimagenet', 'sinusoid'], describe: 'data set (required unless --resume)' })
      .option('ways', { type: 'number', describe: 'classes per task N' })
      .option('shots', { type: 'number', describe: 'support images per class K (sinusoid: points per task)' })
      .option('preset', { type: 'string', choices: ['paper'], default: 'paper', describe: `start from the original hyperparameters of the setting (${Object.keys(PRESETS).join(', ')})` })
      .option('queries', { type: 'number', describe: 'query images per class at training (paper: K for omniglot, 15 for miniimagenet)' })
      .option('meta-batch', { type: 'number', describe: 'tasks per meta-update (paper: 32 omniglot 5-way, 16 20-way, 4 miniimagenet 1-shot, 2 5-shot)' })
      .option('inner-steps', { type: 'number', describe: 'inner SGD steps at training (paper: 1 omniglot 5-way, 5 otherwise)' })
      .option('test-inner-steps', { type: 'number', describe: 'inner steps at evaluation (paper: 10)' })
      .option('inner-lr', { type: 'number', describe: 'inner step size alpha (paper: 0.4 omniglot 5-way, 0.1 20-way, 0.01 miniimagenet; with sum-over-shots)' })
      .option('meta-lr', { type: 'number', describe: 'Adam step size of the meta-update (paper: 1e-3)' })
      .option('loss-reduction', { type: 'string', choices: ['mean', 'sum-over-shots'], describe: 'inner/query loss: mean, or the original\'s sum divided by K' })
      .option('gradient-clip', { type: 'number', describe: 'clip the meta-gradient elementwise to [-c, c] (paper: 10 for miniimagenet)' })
      .option('iterations', { type: 'number', describe: 'meta-iterations in total (paper: 60000; a resumed run continues up to this number)' })
      .option('first-order', { type: 'boolean', default: false, describe: 'first-order MAML: the gradient at the adapted weights, no Hessian-vector products' })
      .option('seed', { type: 'number', describe: 'seed of initialisation and task sampling (default 1)' })
      .option('data', { type: 'string', describe: 'data folder holding the prepared caches (default: $MAML_DATA or ./data)' })
      .option('out', { type: 'string', describe: 'run folder for checkpoint, metrics and plots (default: runs/<setting>-<time>)' })
      .option('checkpoint-every', { type: 'number', describe: 'write a checkpoint every M iterations (default 500; also at the end and at Ctrl-C)' })
      .option('validate-every', { type: 'number', describe: 'validate on the validation split every M iterations (default 500)' })
      .option('validation-tasks', { type: 'number', describe: 'tasks per validation (default 100)' })
      .option('split', { type: 'string', choices: ['paper', 'background'], describe: 'omniglot: paper = 1100/100/423 characters from a seeded shuffle; background = train on images_background, test on images_evaluation (for Lake\'s runs)' })
      .option('padding', { type: 'string', choices: ['tf', 'symmetric'], describe: 'conv padding: tf = TensorFlow SAME as the original, symmetric = PyTorch padding=1' })
      .option('baseline', { type: 'string', choices: ['pretrained'], describe: 'sinusoid: train the paper\'s pretrained baseline instead of MAML (same network, task stream, Adam and iterations; minimises each task\'s query MSE at the shared weights, no inner loop), then pick its test-time fine-tuning step size from {0.001, 0.003, 0.01, 0.02, 0.05, 0.1} by the lowest MSE after 10 steps on 600 validation tasks; stored in the checkpoint for eval' })
      .option('device', { type: 'string', choices: ['auto', 'cpu', 'cuda'], default: 'auto', describe: 'where the meta-batch runs: auto picks CUDA when a device answers (and says which it picked), cuda fails clearly without one' })
      .option('time-limit', { type: 'number', describe: 'stop after this many minutes of training, with a checkpoint, as Ctrl-C does (--resume continues the run)' })
      .option('resume', { type: 'boolean', default: false, describe: 'continue the run in --out from its checkpoint (same configuration; --iterations may be raised)' }),
  handler: async (a) => {
    const args = a as Record<string, any>;
    let config: TrainConfig;
    if (args.resume) {
      if (!args.out) throw new Error('--resume needs --out RUN, the run folder to continue');
      const file = path.join(path.resolve(args.out), CHECKPOINT_FILE);
      if (!existsSync(file)) throw new Error(`--resume: no checkpoint in ${path.resolve(args.out)}`);
      config = readCheckpointConfig<TrainConfig>(file).config;
      if (args.iterations) config = { ...config, iterations: args.iterations };
      if (args.data) config = { ...config, data: path.resolve(args.data) };
      config = { ...config, device: args.device };
    } else {
      if (!args.dataset) throw new Error('--dataset is required (omniglot, miniimagenet or sinusoid)');
      config = resolveTrainConfig({
        dataset: args.dataset as DatasetName, ways: args.ways, shots: args.shots, queries: args.queries, metaBatch: args.metaBatch,
        innerSteps: args.innerSteps, testInnerSteps: args.testInnerSteps, innerLr: args.innerLr, metaLr: args.metaLr,
        lossReduction: args.lossReduction, gradientClip: args.gradientClip, iterations: args.iterations,
        order: args.firstOrder ? 1 : 2, seed: args.seed, data: args.data && path.resolve(args.data), out: args.out && path.resolve(args.out),
        checkpointEvery: args.checkpointEvery, validateEvery: args.validateEvery, validationTasks: args.validationTasks,
        split: args.split, padding: args.padding, device: args.device,
      });
      if (args.baseline === 'pretrained') {
        config = pretrainedBaselineConfig(config);
        if (!args.out) config = { ...config, out: config.out.replace(/sinusoid-10shot-/, 'sinusoid-10shot-pretrained-') };
      }
    }
    if (args.timeLimit !== undefined && !(args.timeLimit > 0))
      throw new Error(`--time-limit must be a positive number of minutes, got ${args.timeLimit}`);
    let deadline = Infinity;  // set when the first iteration starts: data loading does not count
    let stopRequested = false;
    const onSignal = () => {
      if (stopRequested) process.exit(130);
      stopRequested = true;
      process.stderr.write('\nstopping after this iteration and writing a checkpoint (Ctrl-C again to quit at once)\n');
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    let progress: ReturnType<typeof createProgress> | undefined;
    let lastValidation = '';
    let lastBefore = '';
    const result = await (isPretrainedBaseline(config) ? trainPretrainedBaseline : train)(config, {
      resume: args.resume,
      shouldStop: () => stopRequested || Date.now() > deadline,
      events: {
        onStart: ({ summary, startIteration, split, device }) => {
          if (args.timeLimit) deadline = Date.now() + args.timeLimit * 60_000;
          process.stdout.write(`${startIteration ? `resuming at iteration ${startIteration}\n` : ''}configuration:\n${summary}\n${split ? `${split}\n` : ''}device: ${device}${args.device === 'auto' ? ' (picked by --device auto)' : ''}\n`);
          progress = createProgress({ total: config.iterations, label: 'train' });
          progress.update(startIteration);
        },
        onIteration: (m) => {
          const fields: Record<string, string> = { loss: m.metaLoss.toFixed(3) };
          if (config.dataset !== 'sinusoid') {
            // measured on every MEASURE_BEFORE_EVERY-th iteration: show the latest
            if (Number.isFinite(m.queryAccuracyBefore)) lastBefore = `${(m.queryAccuracyBefore * 100).toFixed(1)}%`;
            fields.pre = lastBefore;
            fields.post = `${(m.queryAccuracyAfter * 100).toFixed(1)}%`;
          }
          if (lastValidation) fields.val = lastValidation;
          progress?.update(m.iteration, fields);
        },
        onValidation: (v) => {
          lastValidation = config.dataset === 'sinusoid' ? v.loss.toFixed(3) : `${(v.accuracy * 100).toFixed(1)}%`;
        },
      },
    });
    progress?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.stdout.write(`${result.stoppedEarly ? 'stopped' : 'finished'} at iteration ${result.iteration}: ${result.secondsPerIteration.toFixed(3)} s per iteration (task sampling ${(result.dataFraction * 100).toFixed(2)}% of it)\n`);
    if (result.lastValidation) process.stdout.write(`validation (${result.lastValidation.tasks} tasks, ${result.lastValidation.steps} steps): ${config.dataset === 'sinusoid' ? `mse ${result.lastValidation.loss.toFixed(4)}` : `accuracy ${(result.lastValidation.accuracy * 100).toFixed(2)}%`}\n`);
    const { fineTune } = result as { fineTune?: Parameters<typeof formatSelection>[0] };
    if (fineTune) process.stdout.write(`${formatSelection(fineTune)}\n`);
    process.stdout.write(`checkpoint: ${result.checkpoint}\nmetrics and learning curve: ${result.runDir}\n`);
  },
};
