// A small line chart as SVG (sharp turns it into PNG): a few series against a shared x
// axis, each with its own y axis side, ticks at round numbers. Enough for learning curves
// and error-versus-steps plots without a browser or a plotting stack.
export interface Series {
  name: string;
  points: [number, number][];
  color: string;
  axis?: 'left' | 'right';
  dashed?: boolean;
  markers?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  leftLabel: string;
  rightLabel?: string;
  width?: number;
  height?: number;
  leftRange?: [number, number];
  rightRange?: [number, number];
  extraSvg?: (x: (v: number) => number, y: (v: number) => number) => string;
}

function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function range(values: number[], fallback: [number, number]): [number, number] {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return fallback;
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  return [lo, hi];
}

export function lineChartSvg(series: Series[], o: ChartOptions): string {
  const width = o.width ?? 900, height = o.height ?? 500;
  const m = { left: 70, right: o.rightLabel ? 70 : 20, top: 40, bottom: 60 };
  const all = series.flatMap((s) => s.points);
  const [x0, x1] = range(all.map((p) => p[0]), [0, 1]);
  const side = (axis: 'left' | 'right') => series.filter((s) => (s.axis ?? 'left') === axis).flatMap((s) => s.points.map((p) => p[1]));
  const [l0, l1] = o.leftRange ?? range(side('left'), [0, 1]);
  const [r0, r1] = o.rightRange ?? range(side('right'), [0, 1]);
  const px = (v: number) => m.left + ((v - x0) / (x1 - x0 || 1)) * (width - m.left - m.right);
  const py = (v: number, lo: number, hi: number) => height - m.bottom - ((v - lo) / (hi - lo || 1)) * (height - m.top - m.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16">${escape(o.title)}</text>`,
  ];
  for (const t of niceTicks(x0, x1)) {
    parts.push(`<line x1="${px(t)}" x2="${px(t)}" y1="${m.top}" y2="${height - m.bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${px(t)}" y="${height - m.bottom + 18}" text-anchor="middle">${t}</text>`);
  }
  for (const t of niceTicks(l0, l1)) {
    parts.push(`<line x1="${m.left}" x2="${width - m.right}" y1="${py(t, l0, l1)}" y2="${py(t, l0, l1)}" stroke="#eee"/>`);
    parts.push(`<text x="${m.left - 8}" y="${py(t, l0, l1) + 4}" text-anchor="end">${t}</text>`);
  }
  if (o.rightLabel) {
    for (const t of niceTicks(r0, r1)) parts.push(`<text x="${width - m.right + 8}" y="${py(t, r0, r1) + 4}">${t}</text>`);
    parts.push(`<text transform="translate(${width - 18},${height / 2}) rotate(90)" text-anchor="middle">${escape(o.rightLabel)}</text>`);
  }
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${width - m.left - m.right}" height="${height - m.top - m.bottom}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${width / 2}" y="${height - 18}" text-anchor="middle">${escape(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(18,${height / 2}) rotate(-90)" text-anchor="middle">${escape(o.leftLabel)}</text>`);
  if (o.extraSvg) parts.push(o.extraSvg(px, (v) => py(v, l0, l1)));
  series.forEach((s, i) => {
    const [lo, hi] = (s.axis ?? 'left') === 'left' ? [l0, l1] : [r0, r1];
    const points = s.points.filter((p) => Number.isFinite(p[1]));
    if (points.length > 0) {
      const d = points.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1], lo, hi).toFixed(1)}`).join('');
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6,4"' : ''}/>`);
      if (s.markers) for (const p of points) parts.push(`<circle cx="${px(p[0])}" cy="${py(p[1], lo, hi)}" r="3.5" fill="${s.color}"/>`);
    }
    const ly = m.top + 16 + i * 18;
    parts.push(`<line x1="${m.left + 12}" x2="${m.left + 36}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6,4"' : ''}/>`);
    parts.push(`<text x="${m.left + 42}" y="${ly}">${escape(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

export async function writeSvgAsPng(svg: string, file: string): Promise<void> {
  const { default: sharp } = await import('sharp');
  const { writeFileAtomic } = await import('../io/atomicFile.js');
  writeFileAtomic(file, await sharp(Buffer.from(svg)).png().toBuffer());
}
