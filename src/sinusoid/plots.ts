// The paper's sinusoid figures as PNG (svgChart + sharp): Figure 2, the fits of a few test
// tasks (true curve, the K points, predictions after 0, 1 and 10 steps) for MAML and the
// pretrained baseline; and Figure 3 (left), the test MSE against gradient steps for both,
// with the 95% interval as a band.
import { createEngine, type FloatArray, type NativeEngine } from '../native/engine.js';
import { engineOptionsOf, type TrainConfig } from '../train/config.js';
import { loadCheckpoint, readCheckpointConfig } from '../train/checkpoint.js';
import { resolveCheckpointFile, type EvaluationResult } from '../eval/evaluate.js';
import { lineChartSvg, writeSvgAsPng, type Series } from '../report/svgChart.js';
import { INPUT_RANGE, SinusoidSampler, sinusoid, type SinusoidTask } from '../data/sinusoid.js';
import { isPretrainedBaseline } from './baseline.js';
import { labelOf } from './compare.js';

export interface OpenRun {
  file: string;
  config: TrainConfig;
  iteration: number;
  engine: NativeEngine;
  parameters: FloatArray;
  /** the step size of test-time gradient descent: the chosen one for the baseline, the inner lr for MAML */
  stepSize: number;
  label: string;
}

export function openRun(checkpoint: string): OpenRun {
  const file = resolveCheckpointFile(checkpoint);
  const { config } = readCheckpointConfig<TrainConfig>(file);
  if (config.dataset !== 'sinusoid') throw new Error(`${file} is a ${config.dataset} run, not sinusoid`);
  const engine = createEngine(engineOptionsOf(config));
  const saved = loadCheckpoint<TrainConfig>(file, engine.parameters(), 'float32');
  const fineTune = (saved.extra?.fineTune as { stepSize?: number } | undefined)?.stepSize;
  const baseline = isPretrainedBaseline(config);
  return {
    file, config, iteration: saved.iteration, engine, parameters: saved.parameters,
    stepSize: fineTune ?? config.innerLr, label: baseline ? 'pretrained' : `MAML (order ${config.order})`,
  };
}

export interface TaskFit {
  task: SinusoidTask;
  support: { x: number[]; y: number[] };
  grid: number[];
  truth: number[];
  /** per run label: per step (0, 1, ..., as asked): predictions on the grid */
  predictions: Record<string, Record<number, number[]>>;
}

export function xGrid(points = 201): number[] {
  const [lo, hi] = INPUT_RANGE;
  return Array.from({ length: points }, (_, i) => lo + ((hi - lo) * i) / (points - 1));
}

/** Predictions on a grid of x after each of `steps` gradient steps on the K support points. */
export async function predictAfterSteps(run: OpenRun, batch: ReturnType<SinusoidSampler['sample']>['batch'], steps: number[], grid: number[]): Promise<number[][][]> {
  const P = run.engine.parameterCount;
  const inputs = { images: Float32Array.from(grid), size: grid.length, lossWeight: 1 / grid.length };
  const out: number[][][] = Array.from({ length: batch.tasks }, () => []);
  for (const k of steps) {
    let adapted: FloatArray[];
    if (k === 0) adapted = Array.from({ length: batch.tasks }, () => run.parameters);
    else {
      const r = await run.engine.adaptAndEvaluate(run.parameters, batch, { steps: k, stepSizes: run.stepSize, measureBefore: true }, { keepAdapted: true });
      if (!r.adapted) throw new Error('adaptAndEvaluate returned no adapted parameters');
      adapted = Array.from({ length: batch.tasks }, (_, t) => r.adapted!.slice(t * P, (t + 1) * P));
    }
    for (let t = 0; t < batch.tasks; t++) out[t].push(Array.from(run.engine.forward(adapted[t], inputs).logits));
  }
  return out;
}

/** A few seeded test tasks (the same for every run) and every run's fits after `steps` steps. */
export async function taskFits(runs: OpenRun[], o: { shots: number; tasks?: number; seed?: number; steps?: number[] }): Promise<TaskFit[]> {
  const steps = o.steps ?? [0, 1, 10];
  const sampler = new SinusoidSampler(o.seed ?? 0);
  const { batch, tasks } = sampler.sample(o.tasks ?? 3, o.shots, o.shots);
  const grid = xGrid();
  const fits: TaskFit[] = tasks.map((task, t) => ({
    task,
    support: {
      x: Array.from(batch.support.images!.subarray(t * o.shots, (t + 1) * o.shots)),
      y: Array.from(batch.support.targets!.subarray(t * o.shots, (t + 1) * o.shots)),
    },
    grid, truth: grid.map((x) => sinusoid(task, x)), predictions: {},
  }));
  for (const run of runs) {
    const predicted = await predictAfterSteps(run, batch, steps, grid);
    fits.forEach((fit, t) => {
      fit.predictions[run.label] = Object.fromEntries(steps.map((k, i) => [k, predicted[t][i]]));
    });
  }
  return fits;
}

const STEP_COLORS: Record<number, string> = { 0: '#2ca02c', 1: '#1f77b4', 10: '#d62728' };
const stepColor = (k: number) => STEP_COLORS[k] ?? '#9467bd';

function fitPanel(fit: TaskFit, label: string, stepSizes: Record<string, number>, width: number, height: number): string {
  const predictions = fit.predictions[label];
  const series: Series[] = [{ name: 'ground truth', points: fit.grid.map((x, i) => [x, fit.truth[i]]), color: '#000000' }];
  for (const [k, values] of Object.entries(predictions)) {
    const steps = Number(k);
    series.push({ name: steps === 0 ? 'pre-update' : `${steps} grad step${steps === 1 ? '' : 's'}`, points: fit.grid.map((x, i) => [x, values[i]]), color: stepColor(steps), dashed: steps === 0 });
  }
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const lo = Math.min(...all, ...fit.support.y), hi = Math.max(...all, ...fit.support.y);
  const pad = 0.08 * (hi - lo || 1);
  return lineChartSvg(series, {
    title: `${label}, K=${fit.support.x.length}, alpha=${stepSizes[label]}: A=${fit.task.amplitude.toFixed(2)}, phase=${fit.task.phase.toFixed(2)}`,
    xLabel: 'x', leftLabel: 'y', width, height, leftRange: [lo - pad, hi + pad],
    extraSvg: (px, py) => fit.support.x.map((x, i) => `<path d="M${px(x) - 5},${py(fit.support.y[i])} l5,-8 l5,8 z" fill="#9467bd" stroke="#4b2a70"/>`).join('')
      + `<text x="${px(4.9)}" y="${py(hi + pad) + 14}" text-anchor="end" fill="#4b2a70">▲ the K points used for the gradient steps</text>`,
  });
}

/** Figure 2: rows are test tasks, columns are runs (MAML, pretrained). */
export async function renderFitsFigure(fits: TaskFit[], runs: OpenRun[], file: string): Promise<string> {
  const width = 620, height = 380;
  const stepSizes = Object.fromEntries(runs.map((r) => [r.label, r.stepSize]));
  const panels: string[] = [];
  fits.forEach((fit, row) => runs.forEach((run, col) => {
    const inner = fitPanel(fit, run.label, stepSizes, width, height).replace('<svg ', `<svg x="${col * width}" y="${row * height}" `);
    panels.push(inner);
  }));
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width * runs.length}" height="${height * fits.length}"><rect width="100%" height="100%" fill="white"/>${panels.join('\n')}</svg>`;
  await writeSvgAsPng(svg, file);
  return file;
}

const RUN_COLORS = ['#d62728', '#1f77b4', '#2ca02c', '#ff7f0e'];

/** Figure 3 (left): mean squared error against gradient steps, 95% interval as a band; medians dashed if given.
 *  The axis stops at 1.3 x the largest step-0 mean; values beyond it (diverged tasks) are drawn at the top edge. */
export async function renderErrorCurves(results: EvaluationResult[], file: string, medians?: number[][]): Promise<string> {
  const finiteTop = Math.max(...results.flatMap((r) => r.rows.map((row) => row.mean + row.ci95)).filter(Number.isFinite));
  const top = Math.min(finiteTop * 1.05, 1.3 * Math.max(...results.map((r) => r.rows[0].mean + r.rows[0].ci95)));
  const clamp = (v: number) => (Number.isFinite(v) ? Math.min(v, top) : top);
  const clipped = results.some((r) => r.rows.some((row) => !(row.mean + row.ci95 <= top)));
  const series: Series[] = results.map((r, i) => ({
    name: `${labelOf(r)}: mean (step size ${(r.configuration as Record<string, unknown>).stepSize})`,
    points: r.rows.map((row) => [row.step, clamp(row.mean)]), color: RUN_COLORS[i % RUN_COLORS.length], markers: true,
  }));
  medians?.forEach((m, i) => series.push({ name: `${labelOf(results[i])}: median over tasks`, points: m.map((v, k) => [k, clamp(v)]), color: RUN_COLORS[i % RUN_COLORS.length], dashed: true }));
  const c = results[0].configuration as Record<string, unknown>;
  const svg = lineChartSvg(series, {
    title: `Sinusoid, K=${c.shots}: test MSE vs gradient steps (${c.tasks} tasks, band: 95% CI)`,
    xLabel: 'number of gradient steps', leftLabel: 'mean squared error', leftRange: [0, top],
    extraSvg: (px, py) => results.map((r, i) => {
      const upper = r.rows.map((row) => `${px(row.step).toFixed(1)},${py(clamp(row.mean + row.ci95)).toFixed(1)}`);
      const lower = r.rows.slice().reverse().map((row) => `${px(row.step).toFixed(1)},${py(clamp(Math.max(0, row.mean - row.ci95))).toFixed(1)}`);
      return `<polygon points="${[...upper, ...lower].join(' ')}" fill="${RUN_COLORS[i % RUN_COLORS.length]}" fill-opacity="0.18" stroke="none"/>`;
    }).join('') + (clipped ? `<text x="${px(10) - 6}" y="${py(0) - 8}" text-anchor="end" fill="#555">values above the axis (diverged tasks dominate the mean) drawn at the top edge</text>` : ''),
  });
  await writeSvgAsPng(svg, file);
  return file;
}
