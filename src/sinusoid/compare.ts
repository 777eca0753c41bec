// MAML against the pretrained baseline on the same sinusoid test tasks: one table, the
// mean squared error after 0..S gradient steps with its 95% interval, side by side.
import type { EvaluationResult } from '../eval/evaluate.js';

/** mean ± ci95, readable also when a few diverged tasks blow the mean up. */
export function cell(mean: number, ci95: number): string {
  const f = (v: number) => (Number.isNaN(v) ? 'NaN' : !Number.isFinite(v) ? 'inf' : Math.abs(v) >= 1e4 ? v.toExponential(1) : v.toFixed(3));
  return `${f(mean)} ± ${f(ci95)}`;
}

export function labelOf(r: EvaluationResult): string {
  const c = r.configuration as Record<string, unknown>;
  return c.baseline === 'pretrained' ? 'pretrained' : `MAML (order ${c.order})`;
}

export function formatComparison(results: EvaluationResult[]): string {
  if (results.length === 0) throw new Error('formatComparison: nothing to compare');
  const c = results[0].configuration as Record<string, unknown>;
  const header = [
    `sinusoid regression, K = ${c.shots} support / ${c.queriesPerClass} query points, ${c.tasks} ${c.split} tasks (seed ${c.seed}), mean squared error ± 95% CI`,
    ...results.map((r) => {
      const rc = r.configuration as Record<string, unknown>;
      return `  ${labelOf(r)}: ${rc.checkpoint} (iteration ${rc.iteration}), fine-tuning step size ${rc.stepSize} (${rc.stepSizeSource})`;
    }),
  ];
  const width = 22;
  const lines = [...header, ` step ${results.map((r) => labelOf(r).padStart(width)).join('')}`];
  const steps = Math.max(...results.map((r) => r.rows.length));
  for (let k = 0; k < steps; k++) {
    const cells = results.map((r) => {
      const row = r.rows[k];
      return (row ? cell(row.mean, row.ci95) : '').padStart(width);
    });
    lines.push(`${String(k).padStart(5)} ${cells.join('')}`);
  }
  return lines.join('\n');
}

/** A Markdown table of several evaluations (rows: steps), for a report. */
export function comparisonMarkdown(results: EvaluationResult[]): string {
  const head = `| step | ${results.map((r) => `${labelOf(r)} K=${(r.configuration as Record<string, unknown>).shots}`).join(' | ')} |`;
  const rule = `|---:|${results.map(() => '---:').join('|')}|`;
  const steps = Math.max(...results.map((r) => r.rows.length));
  const rows: string[] = [];
  for (let k = 0; k < steps; k++) rows.push(`| ${k} | ${results.map((r) => (r.rows[k] ? cell(r.rows[k].mean, r.rows[k].ci95) : '')).join(' | ')} |`);
  return [head, rule, ...rows].join('\n');
}
