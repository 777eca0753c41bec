// The whole sinusoid experiment from two trained runs: for each K, the test MSE after
// 0..10 steps of MAML and of the pretrained baseline on the same 600 seeded test tasks
// (table, JSON), Figure 2 (fits of a few test tasks) and Figure 3 left (MSE vs steps).
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { evaluate, type EvaluationResult } from '../eval/evaluate.js';
import { writeFileAtomic } from '../io/atomicFile.js';
import { comparisonMarkdown, formatComparison } from './compare.js';
import { openRun, renderErrorCurves, renderFitsFigure, taskFits } from './plots.js';

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
  files: string[];
  text: string;
}

export async function sinusoidReport(o: SinusoidReportOptions): Promise<SinusoidReport> {
  mkdirSync(o.out, { recursive: true });
  const tables: Record<number, EvaluationResult[]> = {};
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
    const text = formatComparison(results);
    texts.push(text);
    const json = path.join(o.out, `eval-K${shots}.json`);
    writeFileAtomic(json, `${JSON.stringify(results.map((r) => ({ configuration: r.configuration, metric: r.metric, rows: r.rows })), null, 2)}\n`);
    const table = path.join(o.out, `table-K${shots}.txt`);
    writeFileAtomic(table, `${text}\n`);
    const curves = await renderErrorCurves(results, path.join(o.out, `mse-vs-steps-K${shots}.png`));
    o.onProgress?.(`plotting fits for K = ${shots}`);
    const fits = await taskFits(runs, { shots, tasks: o.plotTasks ?? 3, seed: o.plotSeed ?? 7, steps: [0, 1, o.steps ?? 10] });
    const figure = await renderFitsFigure(fits, runs, path.join(o.out, `fits-K${shots}.png`));
    files.push(json, table, curves, figure);
  }
  const all = o.shots.flatMap((k) => tables[k]);
  const md = path.join(o.out, 'table.md');
  writeFileAtomic(md, `# Sinusoid regression: test MSE ± 95% CI after 0..${o.steps ?? 10} gradient steps (${o.tasks ?? 600} tasks)\n\n${comparisonMarkdown(all)}\n`);
  files.push(md);
  return { tables, files, text: texts.join('\n\n') };
}
