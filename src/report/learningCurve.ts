// learning-curve.png in the run folder: meta-loss (smoothed) on the left axis, query
// accuracy before and after adaptation and validation accuracy on the right.
import path from 'node:path';
import type { IterationMetrics, ValidationMetrics } from '../train/metricsLog.js';
import { lineChartSvg, writeSvgAsPng, type Series } from './svgChart.js';

/** Means over consecutive windows, so 60000 noisy points become a readable curve. */
export function windowed(rows: IterationMetrics[], key: keyof IterationMetrics, points = 200): [number, number][] {
  const size = Math.max(1, Math.ceil(rows.length / points));
  const out: [number, number][] = [];
  for (let i = 0; i < rows.length; i += size) {
    // skip values not measured in this iteration (NaN, or null once read back from JSON)
    const values = rows.slice(i, i + size).map((r) => r[key] as number | null).filter((v): v is number => Number.isFinite(v));
    if (values.length) out.push([rows[Math.min(i + size, rows.length) - 1].iteration, values.reduce((s, v) => s + v, 0) / values.length]);
  }
  return out;
}

export async function renderLearningCurve(runDir: string, rows: IterationMetrics[], validation: ValidationMetrics[], title: string): Promise<string | undefined> {
  if (rows.length === 0) return undefined;
  const regression = rows.every((r) => r.queryAccuracyAfter === 0);
  const series: Series[] = [{ name: 'meta-loss (query, after adaptation)', points: windowed(rows, 'metaLoss'), color: '#d62728' }];
  if (!regression) {
    series.push({ name: 'query accuracy before adaptation', points: windowed(rows, 'queryAccuracyBefore'), color: '#7f7f7f', axis: 'right', dashed: true });
    series.push({ name: 'query accuracy after adaptation', points: windowed(rows, 'queryAccuracyAfter'), color: '#1f77b4', axis: 'right' });
    if (validation.length) series.push({ name: 'validation accuracy', points: validation.map((v) => [v.iteration, v.accuracy]), color: '#2ca02c', axis: 'right', markers: true });
  }
  const svg = lineChartSvg(series, {
    title: `Learning curve: ${title}`, xLabel: 'meta-iteration', leftLabel: 'loss',
    rightLabel: regression ? undefined : 'accuracy', rightRange: regression ? undefined : [0, 1],
  });
  const file = path.join(runDir, 'learning-curve.png');
  await writeSvgAsPng(svg, file);
  return file;
}
