// The whole sinusoid experiment from two trained runs: for each K, the test MSE after
// 0..10 steps of MAML and of the pretrained baseline on the same 600 seeded test tasks
// (table, JSON), Figure 2 (fits of a few test tasks) and Figure 3 left (MSE vs steps).
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { evaluate, type EvaluationResult } from '../eval/evaluate.js';
import { writeFileAtomic } from '../io/atomicFile.js';
import { comparisonMarkdown, formatComparison } from './compare.js';
import { openRun, renderErrorCurves, renderFitsFigure, taskFits, type OpenRun } from './plots.js';
import { SinusoidTaskSource } from '../train/taskSources.js';

/** A task whose query MSE exceeds this has diverged: (2 A_max)^2 = 100 is the error of predicting the negated curve. */
export const DIVERGED_MSE = 100;

/** Per-task query MSE after 0..steps steps ([tasks][steps + 1]) on the same seeded test stream evaluate() reads. */
export async function perTaskErrors(run: OpenRun, o: { shots: number; tasks: number; seed: number; steps: number }): Promise<number[][]> {
  const source = new SinusoidTaskSource(o.seed, o.shots, o.shots);
  const out: number[][] = [];
  while (out.length < o.tasks) {
    const count = Math.min(run.config.metaBatch, o.tasks - out.length);
    const r = await run.engine.adaptAndEvaluate(run.parameters, source.next(count), { steps: o.steps, stepSizes: run.stepSize });
    for (let t = 0; t < count; t++) out.push(Array.from(r.queryLoss.subarray(t * (o.steps + 1), (t + 1) * (o.steps + 1))));
  }
  return out;
}

export interface RobustRow {
  step: number;
  median: number;
  diverged: number;          // tasks with MSE > DIVERGED_MSE or not finite
  meanOfRest: number;        // mean over the other tasks
}

export function robustSummary(errors: number[][]): RobustRow[] {
  const steps = errors[0]?.length ?? 0;
  return Array.from({ length: steps }, (_, k) => {
    const values = errors.map((e) => e[k]);
    const sorted = values.map((v) => (Number.isNaN(v) ? Infinity : v)).sort((a, b) => a - b);
    const n = sorted.length;
    const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    const rest = values.filter((v) => Number.isFinite(v) && v <= DIVERGED_MSE);
    return { step: k, median, diverged: n - rest.length, meanOfRest: rest.reduce((a, b) => a + b, 0) / (rest.length || 1) };
  });
}

export function formatRobust(labels: string[], rows: RobustRow[][]): string {
  const width = 30;
  const lines = [`per-task view (same tasks): median MSE | tasks diverged (MSE > ${DIVERGED_MSE} or NaN) | mean MSE of the others`,
    ` step ${labels.map((l) => l.padStart(width)).join('')}`];
  for (let k = 0; k < rows[0].length; k++) {
    lines.push(`${String(k).padStart(5)} ${rows.map((r) => `${r[k].median.toFixed(3)} | ${String(r[k].diverged).padStart(3)} | ${r[k].meanOfRest.toFixed(3)}`.padStart(width)).join('')}`);
  }
  return lines.join('\n');
}

export interface SinusoidReportOptions {
  runs: string[];            // MAML first, then the baseline (any sinusoid runs)
  shots: number[];           // e.g. [5, 10]
  tasks?: number;            // test tasks (600)
  steps?: number;            // gradient steps at test time (10)
  seed?: number;             // test tasks' seed (0)
  plotTasks?: number;        // tasks in the fits figure (3)
  plotSeed?: number;         // seed of those tasks (7)
  out: string;
  onProgress?: (what: string) => void;
}

export interface SinusoidReport {
  tables: Record<number, EvaluationResult[]>;
  robust: Record<number, RobustRow[][]>;
  files: string[];
  text: string;
}

export async function sinusoidReport(o: SinusoidReportOptions): Promise<SinusoidReport> {
  mkdirSync(o.out, { recursive: true });
  const tables: Record<number, EvaluationResult[]> = {};
  const robust: Record<number, RobustRow[][]> = {};
  const files: string[] = [];
  const texts: string[] = [];
  const runs = o.runs.map((r) => openRun(r));
  for (const shots of o.shots) {
    const results: EvaluationResult[] = [];
    for (const run of o.runs) {
      o.onProgress?.(`evaluating ${run} with K = ${shots}`);
      results.push(await evaluate({ checkpoint: run, shots, tasks: o.tasks ?? 600, steps: o.steps ?? 10, seed: o.seed ?? 0 }));
    }
    tables[shots] = results;
    const perTask: RobustRow[][] = [];
    for (const run of runs) perTask.push(robustSummary(await perTaskErrors(run, { shots, tasks: o.tasks ?? 600, seed: o.seed ?? 0, steps: o.steps ?? 10 })));
    robust[shots] = perTask;
    const text = `${formatComparison(results)}\n${formatRobust(runs.map((r) => r.label), perTask)}`;
    texts.push(text);
    const json = path.join(o.out, `eval-K${shots}.json`);
    writeFileAtomic(json, `${JSON.stringify(results.map((r, i) => ({ configuration: r.configuration, metric: r.metric, rows: r.rows, perTask: perTask[i] })), null, 2)}\n`);
    const table = path.join(o.out, `table-K${shots}.txt`);
    writeFileAtomic(table, `${text}\n`);
    const curves = await renderErrorCurves(results, path.join(o.out, `mse-vs-steps-K${shots}.png`), perTask.map((r) => r.map((row) => row.median)));
    o.onProgress?.(`plotting fits for K = ${shots}`);
    const fits = await taskFits(runs, { shots, tasks: o.plotTasks ?? 3, seed: o.plotSeed ?? 7, steps: [0, 1, o.steps ?? 10] });
    const figure = await renderFitsFigure(fits, runs, path.join(o.out, `fits-K${shots}.png`));
    files.push(json, table, curves, figure);
  }
  const all = o.shots.flatMap((k) => tables[k]);
  const md = path.join(o.out, 'table.md');
  writeFileAtomic(md, `# Sinusoid regression: test MSE ± 95% CI after 0..${o.steps ?? 10} gradient steps (${o.tasks ?? 600} tasks)\n\n${comparisonMarkdown(all)}\n\n`
    + `Tasks diverged (MSE > ${DIVERGED_MSE} or NaN) at the last step: ${o.shots.map((k) => runs.map((r, i) => `${r.label} K=${k}: ${robust[k][i][robust[k][i].length - 1].diverged}`).join(', ')).join('; ')}. `
    + `Per-task medians and the mean over the other tasks: table-K*.txt and eval-K*.json (perTask).\n`);
  files.push(md);
  return { tables, robust, files, text: texts.join('\n\n') };
}
