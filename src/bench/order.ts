// `maml-native bench order`: seconds per meta-iteration, images/s, FLOPs and GFLOP/s, peak
// memory and the engine's workspace for the paper's six settings in both orders, an
// inner-step sweep, and the machine's GEMM ceiling. Every measurement runs in a fresh
// child process (src/bench/worker.ts) so peak-memory figures stay apart. The one place that
// measures: the CLI command and bench/order.ts both call runOrderBench.
import { fork, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEngine, loadAddon, type LayerEntry } from '../native/engine.js';
import { createProgress, formatDuration, type Progress } from '../report/progress.js';
import { lineChartSvg, writeSvgAsPng, type Series } from '../report/svgChart.js';
import { FLOP_RULE, metaGradientFlops } from './flops.js';
import {
  PAPER_SETTING_NAMES, REFERENCE, SWEEP_SETTING_NAMES, TINY_SETTINGS, findSetting, imagesPerIteration,
  type BenchSetting,
} from './settings.js';
import type { WorkerFailure, WorkerJob, WorkerReply, WorkerRun } from './worker.js';

export type BenchDevice = 'cpu' | 'cuda';

export interface OrderBenchOptions {
  device?: BenchDevice;
  /** names, or ['all'] (default: all six; with quick, omniglot-5w1s and miniimagenet-5w1s) */
  settings?: string[];
  quick?: boolean;
  /** the tiny setting everywhere, the sweep included (tests) */
  tiny?: boolean;
  /** run folder (default runs/bench-<timestamp>) */
  out?: string;
  repeats?: number;
  warmup?: number;
  sweepSteps?: number[];
  sweep?: boolean;
  seed?: number;
  /** lines for the user (the estimate, where files went); default stderr */
  log?: (line: string) => void;
  /** show a progress bar / lines (default true) */
  progress?: boolean;
}

export interface Spread { median: number; min: number; max: number; q1: number; q3: number; iqr: number }

export interface Measurement extends Spread {
  setting: string;
  order: 1 | 2;
  steps: number;
  tasks: number;
  warmup: number;
  repeats: number;
  seconds: number[];
  imagesPerIteration: number;
  imagesPerSecond: number;
  flops: number;               // per meta-iteration, FLOP_RULE
  gflops: number;              // flops / median / 1e9
  gemmFraction: number | null; // gflops / GEMM ceiling
  peakRssMiB: number;          // the child's maxRSS
  baselineRssMiB: number;      // the child's maxRSS before the engine was made
  cacheMiB: number;
  workspaceBytes: number;
  workspaceMiB: number;
  taskGroup: number;
  /** estimate of theta_0..theta_K (and the gradient) per task of a group, held outside workspaceBytes (meta_learner.cpp) */
  parameterCopiesMiB: number;
  threads: number;
  referenceSeconds: number | null;
  speedupVsReference: number | null;  // referenceSeconds / median
  /** median of the trainer's usual call (no pre-adaptation query pass); null where not timed (the sweep) */
  trainingMedian: number | null;
  trainingSpeedupVsReference: number | null;
}

export interface OrderRatio { setting: string; time: number; peakRss: number; workspace: number }

export interface LinearFit { intercept: number; slope: number; r2: number }

export interface SweepResult {
  setting: string;
  steps: number[];
  points: Measurement[];
  timeFit: Record<'1' | '2', LinearFit | null>;
  /** (max - min) / min of peak RSS over the steps, per order */
  peakRssSpread: Record<'1' | '2', number | null>;
  referenceMemoryMiB: Record<1 | 2, Record<number, number>> | null;
}

export interface GemmCeiling {
  available: boolean;
  binary: string;
  size?: number;
  threads?: number;
  seconds?: number;
  gflops?: number;     // the best reading: the machine's ceiling
  readings?: number[]; // GFLOP/s of each reading (before the settings, then after them)
  reason?: string;
}

export interface OrderBenchResult {
  command: 'bench order';
  startedAt: string;
  finishedAt: string;
  wallSeconds: number;
  device: BenchDevice;
  quick: boolean;
  tiny: boolean;
  host: { cpus: number; cpuModel: string; threads: number; totalMemoryMiB: number; node: string; platform: string };
  flopRule: string;
  memoryNote: string;
  gemm: GemmCeiling;
  estimateSeconds: number | null;
  settings: (BenchSetting & { imagesPerIteration: number })[];
  rows: Measurement[];
  ratios: OrderRatio[];
  sweep: SweepResult[];
  reference: typeof REFERENCE;
  files: { json: string; markdown: string; png: string | null };
}

const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

// ---------- statistics ----------

function quantile(sorted: number[], p: number): number {
  if (sorted.length === 1) return sorted[0];
  const x = p * (sorted.length - 1), lo = Math.floor(x), hi = Math.ceil(x);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo);
}

export function spread(values: number[]): Spread {
  if (values.length === 0) throw new Error('no timed iterations');
  const s = [...values].sort((a, b) => a - b);
  const q1 = quantile(s, 0.25), q3 = quantile(s, 0.75);
  return { median: quantile(s, 0.5), min: s[0], max: s[s.length - 1], q1, q3, iqr: q3 - q1 };
}

export function linearFit(points: [number, number][]): LinearFit | null {
  if (points.length < 2) return null;
  const n = points.length;
  const mx = points.reduce((a, p) => a + p[0], 0) / n, my = points.reduce((a, p) => a + p[1], 0) / n;
  let sxx = 0, sxy = 0, syy = 0;
  for (const [x, y] of points) { sxx += (x - mx) ** 2; sxy += (x - mx) * (y - my); syy += (y - my) ** 2; }
  if (sxx === 0) return null;
  const slope = sxy / sxx;
  return { intercept: my - slope * mx, slope, r2: syy === 0 ? 1 : (sxy * sxy) / (sxx * syy) };
}

// ---------- the GEMM ceiling ----------

// One reading: the best of `repeats` products (a shared or throttled machine reads low in
// its slow minutes, so the bench takes readings before and after the settings and keeps
// the best: the ceiling is what the machine can do, not what it did in one moment).
export function measureGemmCeiling(threads: number, size = 1024, repeats = 20): GemmCeiling {
  const binary = path.join(PACKAGE_ROOT, 'build', process.platform === 'win32' ? 'maml_bench_gemm.exe' : 'maml_bench_gemm');
  if (!existsSync(binary)) {
    return { available: false, binary, reason: `${binary} is missing (built by \`npm run build:native\`); the % of GEMM peak column is left out` };
  }
  try {
    const text = execFileSync(binary, [String(size), String(repeats)], { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads) } });
    const j = JSON.parse(text.trim().split('\n').pop()!) as { size: number; threads: number; seconds: number; gflops: number };
    if (!(j.gflops > 0)) throw new Error(`no positive gflops in ${text}`);
    return { available: true, binary, size: j.size, threads: j.threads, seconds: j.seconds, gflops: j.gflops, readings: [j.gflops] };
  } catch (e) {
    return { available: false, binary, reason: `${binary} failed: ${(e as Error).message}` };
  }
}

/** The ceiling of two readings: the faster one, with both readings kept. */
export function combineCeilings(a: GemmCeiling, b: GemmCeiling): GemmCeiling {
  if (!a.available) return b.available ? b : a;
  if (!b.available) return a;
  const best = b.gflops! > a.gflops! ? b : a;
  return { ...best, readings: [...(a.readings ?? [a.gflops!]), ...(b.readings ?? [b.gflops!])] };
}

// ---------- the child processes ----------

function runWorker(job: WorkerJob, onIteration: () => void, device: BenchDevice = 'cpu'): Promise<WorkerReply> {
  return new Promise((resolve, reject) => {
    const child = fork(WORKER, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, MAML_BENCH_DEVICE: device } });
    let reply: WorkerReply | WorkerFailure | undefined;
    child.on('message', (m: { type?: string } & Partial<WorkerReply | WorkerFailure>) => {
      if (m.type === 'iteration') onIteration();
      else reply = m as WorkerReply | WorkerFailure;
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (reply?.ok) resolve(reply);
      else if (reply) reject(new Error(`bench worker (${job.setting.name}): ${reply.error}`));
      else reject(new Error(`bench worker (${job.setting.name}) ended without a reply (exit ${code ?? signal}); out of memory?`));
    });
    child.send(job);
  });
}

// ---------- the plan ----------

interface PlannedJob { kind: 'main' | 'sweep'; setting: BenchSetting; run: WorkerRun }

function cudaCheck(): void {
  const devices = loadAddon().cudaDevices();
  if (!(devices.count > 0)) {
    throw new Error(`no CUDA device: ${devices.error ?? 'cudaDevices() found none'}; run with --device cpu`);
  }
}

function timestamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
}

const layersCache = new Map<string, LayerEntry[]>();
function layersOf(s: BenchSetting): LayerEntry[] {
  let l = layersCache.get(s.name);
  if (!l) {
    l = createEngine({ arch: s.arch, ways: s.ways, imageSize: s.imageSize, filters: s.filters }).layers();
    layersCache.set(s.name, l);
  }
  return l;
}

export function settingFlops(s: BenchSetting, order: 1 | 2, steps = s.innerSteps): number {
  return metaGradientFlops(layersOf(s), s.metaBatch, s.ways * s.shots, s.ways * s.queries, steps, order === 2, true);
}

export async function runOrderBench(options: OrderBenchOptions = {}): Promise<OrderBenchResult> {
  const started = new Date();
  const device = options.device ?? 'cpu';
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (device !== 'cpu' && device !== 'cuda') throw new Error(`--device: expected cpu or cuda, got ${device as string}`);
  if (device === 'cuda') cudaCheck();
  const quick = options.quick ?? false, tiny = options.tiny ?? false;

  // which settings, how many repeats, which sweep
  const asked = (options.settings ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  let settings: BenchSetting[];
  if (tiny) settings = asked.length && !asked.includes('all') ? asked.map(findSetting) : TINY_SETTINGS;
  else if (asked.length === 0) settings = (quick ? ['omniglot-5w1s', 'miniimagenet-5w1s'] : [...PAPER_SETTING_NAMES]).map(findSetting);
  else if (asked.includes('all')) settings = PAPER_SETTING_NAMES.map(findSetting);
  else settings = [...new Set(asked)].map(findSetting);
  const fixedRepeats = options.repeats ?? (quick ? 3 : undefined);   // full: 10, fewer (>= 5) for slow settings
  const warmup = options.warmup ?? (quick ? 1 : 2);
  const sweepRepeats = options.repeats ?? (quick ? 2 : 3);
  const sweepOn = options.sweep ?? true;
  let sweepSettings: BenchSetting[] = [];
  if (sweepOn) {
    if (tiny) sweepSettings = [settings[0]];
    else if (quick) sweepSettings = [asked.length && !asked.includes('all') ? settings[0] : findSetting('omniglot-5w1s')];
    else sweepSettings = SWEEP_SETTING_NAMES.map(findSetting);
  }
  const requestedSweep = options.sweepSteps;
  const baseSweep = requestedSweep ?? (quick ? [1, 2, 5] : [1, 2, 5, 10, 20]);

  const threads = loadAddon().threads();
  const gemmBefore = measureGemmCeiling(threads);
  log(gemmBefore.available
    ? `GEMM ceiling, first reading (build/maml_bench_gemm ${gemmBefore.size}, ${gemmBefore.threads} threads): ${gemmBefore.gflops!.toFixed(1)} GFLOP/s`
    : `GEMM ceiling not measured: ${gemmBefore.reason}`);

  // full suite: a first timed iteration per setting (both orders, the setting's steps) for the estimate
  const probeSettings = quick ? [] : [...new Map([...settings, ...sweepSettings].map((s) => [s.name, s])).values()];
  const probe = new Map<string, { 1: number; 2: number; rss: number; overhead: number }>();
  const probeStart = Date.now();
  for (const s of probeSettings) {
    const t0 = Date.now();
    const r = await runWorker({ setting: s, seed: 1, runs: [1, 2].map((order) => ({ order: order as 1 | 2, steps: s.innerSteps, warmup: 0, repeats: 1 })) }, () => {}, device);
    const iter = r.runs[0].seconds[0] + r.runs[1].seconds[0];
    probe.set(s.name, { 1: r.runs[0].seconds[0], 2: r.runs[1].seconds[0], rss: r.peakRssMiB, overhead: Math.max(0, (Date.now() - t0) / 1000 - iter) });
  }
  const probeSeconds = (Date.now() - probeStart) / 1000;
  const estimateIteration = (s: BenchSetting, order: 1 | 2, steps: number) =>
    probe.has(s.name) ? probe.get(s.name)![order] * settingFlops(s, order, steps) / settingFlops(s, order, s.innerSteps) : 0;
  // full suite: 10 timed iterations, fewer (not under 5) where that would take more than 90 s
  const repeatsFor = (s: BenchSetting, order: 1 | 2) =>
    fixedRepeats ?? Math.max(5, Math.min(10, Math.floor(90 / Math.max(1e-9, estimateIteration(s, order, s.innerSteps)))));

  const plan: PlannedJob[] = [];
  for (const s of settings) for (const order of [1, 2] as const) plan.push({ kind: 'main', setting: s, run: { order, steps: s.innerSteps, warmup, repeats: repeatsFor(s, order), trainingRepeats: repeatsFor(s, order) } });
  const skipped: string[] = [];
  for (const s of sweepSettings) {
    const steps = [...baseSweep];
    if (!requestedSweep && !quick && !tiny) {
      // 40 steps where it fits: under a minute an iteration and, by the probe's RSS, well inside memory
      const t40 = estimateIteration(s, 2, 40);
      if (t40 <= 60 && probe.get(s.name)!.rss * 3 < os.totalmem() / 1048576 / 2) steps.push(40);
      else skipped.push(`${s.name}: 40 steps left out (about ${t40.toFixed(1)} s an iteration)`);
    }
    for (const st of steps) for (const order of [1, 2] as const) plan.push({ kind: 'sweep', setting: s, run: { order, steps: st, warmup: 1, repeats: sweepRepeats } });
  }
  const jobSeconds = (j: PlannedJob) => (j.run.warmup + j.run.repeats + (j.run.trainingRepeats ?? 0)) * estimateIteration(j.setting, j.run.order, j.run.steps) + (probe.get(j.setting.name)?.overhead ?? 0);
  const estimateSeconds = quick ? null : plan.reduce((a, j) => a + jobSeconds(j), 0);
  const mainRepeats = [...new Set(plan.filter((j) => j.kind === 'main').map((j) => j.run.repeats))].sort((a, b) => b - a).join('/');
  log(`bench order: ${settings.length} setting(s) x 2 orders, ${mainRepeats} timed iterations after ${warmup} warm-up; sweep ` +
      (sweepSettings.length ? `${sweepSettings.map((s) => s.name).join(', ')} at ${[...new Set(plan.filter((j) => j.kind === 'sweep').map((j) => j.run.steps))].join('/')} steps` : 'off') +
      `; ${plan.length} child processes, device ${device}, ${threads} thread(s)`);
  if (estimateSeconds === null) log('quick smoke check: no estimate (the full suite times a first iteration per setting and states one)');
  else log(`estimate: about ${formatDuration(estimateSeconds)} (from a first timed iteration per setting, ${formatDuration(probeSeconds)} spent on those)`);
  for (const line of skipped) log(line);

  // run
  const totalIterations = plan.reduce((a, j) => a + j.run.warmup + j.run.repeats + (j.run.trainingRepeats ?? 0), 0);
  const progress: Progress | undefined = options.progress === false ? undefined : createProgress({ total: totalIterations, label: 'bench' });
  let done = 0;
  const measured: { job: PlannedJob; reply: WorkerReply }[] = [];
  try {
    for (const job of plan) {
      const s = job.setting;
      const fields = { setting: s.name, order: job.run.order, steps: job.run.steps };
      progress?.update(done, fields);
      const reply = await runWorker({ setting: s, seed: 1, runs: [job.run] }, () => { done++; progress?.update(done, fields); }, device);
      measured.push({ job, reply });
    }
  } finally {
    progress?.stop();
  }
  const gemm = gemmBefore.available ? combineCeilings(gemmBefore, measureGemmCeiling(threads)) : gemmBefore;
  if (gemm.available) log(`GEMM ceiling, readings ${gemm.readings!.map((g) => g.toFixed(1)).join(', ')}: ${gemm.gflops!.toFixed(1)} GFLOP/s`);
  const measuredRows = measured.map(({ job, reply }) => ({ job, m: toMeasurement(job.setting, reply, gemm) }));

  const rows = measuredRows.filter((x) => x.job.kind === 'main').map((x) => x.m);
  const ratios: OrderRatio[] = settings.map((s) => {
    const first = rows.find((r) => r.setting === s.name && r.order === 1)!, second = rows.find((r) => r.setting === s.name && r.order === 2)!;
    return { setting: s.name, time: second.median / first.median, peakRss: second.peakRssMiB / first.peakRssMiB, workspace: second.workspaceBytes / first.workspaceBytes };
  });
  const sweep: SweepResult[] = sweepSettings.map((s) => {
    const points = measuredRows.filter((x) => x.job.kind === 'sweep' && x.job.setting.name === s.name).map((x) => x.m);
    const fit = (order: 1 | 2) => linearFit(points.filter((p) => p.order === order).map((p) => [p.steps, p.median]));
    const rssSpread = (order: 1 | 2) => {
      const v = points.filter((p) => p.order === order).map((p) => p.peakRssMiB);
      return v.length ? (Math.max(...v) - Math.min(...v)) / Math.min(...v) : null;
    };
    return {
      setting: s.name, steps: [...new Set(points.map((p) => p.steps))], points,
      timeFit: { 1: fit(1), 2: fit(2) }, peakRssSpread: { 1: rssSpread(1), 2: rssSpread(2) },
      referenceMemoryMiB: REFERENCE.sweepMemoryMiB[s.name] ?? null,
    };
  });

  const outDir = path.resolve(options.out ?? path.join('runs', `bench-${timestamp(started)}`));
  mkdirSync(outDir, { recursive: true });
  const files = { json: path.join(outDir, 'bench-order.json'), markdown: path.join(outDir, 'bench-order.md'), png: sweep.length ? path.join(outDir, 'bench-order-sweep.png') : null };
  const finished = new Date();
  const cpus = os.cpus();
  const result: OrderBenchResult = {
    command: 'bench order', startedAt: started.toISOString(), finishedAt: finished.toISOString(),
    wallSeconds: (finished.getTime() - started.getTime()) / 1000, device, quick, tiny,
    host: { cpus: cpus.length, cpuModel: cpus[0]?.model ?? '?', threads, totalMemoryMiB: os.totalmem() / 1048576, node: process.version, platform: `${process.platform}-${process.arch}` },
    flopRule: FLOP_RULE,
    memoryNote: 'peak RSS = process.resourceUsage().maxRSS of a fresh child per setting x order (includes Node, the addon and the random image cache; baselineRssMiB is the same before the engine was made); workspace = metaGradient result.workspaceBytes',
    gemm, estimateSeconds,
    settings: settings.map((s) => ({ ...s, imagesPerIteration: imagesPerIteration(s) })),
    rows, ratios, sweep, reference: REFERENCE, files,
  };
  const markdown = formatOrderBench(result);
  writeFileSync(files.json, `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(files.markdown, `${markdown}\n`);
  if (files.png) await writeSvgAsPng(sweepChartSvg(sweep), files.png);
  return result;
}

function toMeasurement(s: BenchSetting, reply: WorkerReply, gemm: GemmCeiling): Measurement {
  const run = reply.runs[0];
  const st = spread(run.seconds);
  const flops = settingFlops(s, run.order, run.steps);
  const gflops = flops / st.median / 1e9;
  const images = imagesPerIteration(s);
  const ref = run.steps === s.innerSteps ? REFERENCE.seconds[s.name]?.[run.order] ?? null : null;
  const trainingMedian = run.trainingSeconds.length ? spread(run.trainingSeconds).median : null;
  return {
    setting: s.name, order: run.order, steps: run.steps, tasks: s.metaBatch, warmup: run.warmup, repeats: run.repeats,
    seconds: run.seconds, ...st, imagesPerIteration: images, imagesPerSecond: images / st.median, flops, gflops,
    gemmFraction: gemm.available ? gflops / gemm.gflops! : null,
    peakRssMiB: reply.peakRssMiB, baselineRssMiB: reply.baselineRssMiB, cacheMiB: reply.cacheMiB,
    workspaceBytes: run.workspaceBytes, workspaceMiB: run.workspaceBytes / 1048576, taskGroup: run.taskGroup,
    parameterCopiesMiB: (run.steps + 2) * run.taskGroup * reply.parameterCount * reply.bytesPerScalar / 1048576, threads: reply.threads,
    referenceSeconds: ref, speedupVsReference: ref === null ? null : ref / st.median,
    trainingMedian, trainingSpeedupVsReference: ref === null || trainingMedian === null ? null : ref / trainingMedian,
  };
}

// ---------- output ----------

const sig = (v: number, digits = 3): string => {
  if (!Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 10 ** digits) return v.toFixed(0);
  return String(Number(v.toPrecision(digits)));
};

export function formatOrderBench(r: OrderBenchResult): string {
  const lines: string[] = [];
  lines.push(`## bench order (${r.device}, ${r.host.threads} thread(s), ${r.host.cpuModel}${r.quick ? ', quick' : ''})`, '');
  lines.push(r.gemm.available
    ? `GEMM ceiling: ${sig(r.gemm.gflops!)} GFLOP/s (build/maml_bench_gemm ${r.gemm.size}, ${r.gemm.threads} threads; ` +
      `the best of the readings ${(r.gemm.readings ?? [r.gemm.gflops!]).map((g) => sig(g)).join(', ')} taken before and after the settings, each the best of 20 products).`
    : `GEMM ceiling: not measured (${r.gemm.reason}).`);
  lines.push('');
  lines.push('| setting | order | s/iter median | IQR | min-max | training call s/iter | images/s | GFLOP/iter | GFLOP/s | % of GEMM peak | peak RSS MiB | workspace MiB | 2nd/1st time, RSS | reference s/iter | vs reference | vs reference, training call |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const m of r.rows) {
    const ratio = r.ratios.find((x) => x.setting === m.setting);
    lines.push(`| ${m.setting} | ${m.order === 1 ? '1st' : '2nd'} | ${sig(m.median)} | ${sig(m.iqr, 2)} | ${sig(m.min)}-${sig(m.max)} | ` +
      `${m.trainingMedian === null ? '-' : sig(m.trainingMedian)} | ${sig(m.imagesPerSecond)} | ${sig(m.flops / 1e9)} | ${sig(m.gflops)} | ` +
      `${m.gemmFraction === null ? '-' : sig(100 * m.gemmFraction, 2) + '%'} | ${sig(m.peakRssMiB, 4)} | ${sig(m.workspaceMiB)} | ` +
      `${m.order === 2 && ratio ? `${sig(ratio.time)}x, ${sig(ratio.peakRss)}x` : ''} | ${m.referenceSeconds ?? '-'} | ${m.speedupVsReference === null ? '-' : sig(m.speedupVsReference) + 'x'} | ` +
      `${m.trainingSpeedupVsReference === null ? '-' : sig(m.trainingSpeedupVsReference) + 'x'} |`);
  }
  lines.push('');
  lines.push(`Seconds per meta-iteration (one engine.metaGradient call on a meta-batch, inputs through the image cache) after warm-up; ` +
    `images/s = tasks x ways x (shots + queries) / median. ${r.flopRule} GFLOP/s = FLOPs / median. ` +
    `Training call: the same call without the pre-adaptation query pass, as the trainer makes it on 9 iterations of 10 ` +
    `(it samples the pre-adaptation accuracy every 10th), timed as many times after the others.`);
  lines.push(`Memory: ${r.memoryNote}.`);
  lines.push(`Reference: ${r.reference.source}; 'vs reference' = reference seconds / ours.`);
  for (const sw of r.sweep) {
    lines.push('', `### inner-step sweep: ${sw.setting}`, '');
    lines.push('| steps | order | s/iter median | IQR | GFLOP/s | peak RSS MiB | workspace MiB | parameter copies MiB (est.) | reference peak MiB |');
    lines.push('|---|---|---|---|---|---|---|---|---|');
    for (const p of [...sw.points].sort((a, b) => a.steps - b.steps || a.order - b.order)) {
      const ref = sw.referenceMemoryMiB?.[p.order]?.[p.steps];
      lines.push(`| ${p.steps} | ${p.order === 1 ? '1st' : '2nd'} | ${sig(p.median)} | ${sig(p.iqr, 2)} | ${sig(p.gflops)} | ${sig(p.peakRssMiB, 4)} | ${sig(p.workspaceMiB)} | ${sig(p.parameterCopiesMiB)} | ${ref === undefined ? '-' : (p.order === 1 ? '~' : '') + ref} |`);
    }
    lines.push('', 'parameter copies (est.) = (steps + 2) x task group x parameters x 4 bytes: theta_0..theta_K and the gradient of each task run at once, which meta_learner.cpp holds outside workspaceBytes.');
    for (const order of ['1', '2'] as const) {
      const f = sw.timeFit[order], sp = sw.peakRssSpread[order];
      if (f) lines.push('', `${order === '1' ? 'first' : 'second'} order: time = ${sig(f.intercept)} + ${sig(f.slope)} x steps s (R^2 ${f.r2.toFixed(3)}); peak RSS varies by ${sp === null ? '-' : sig(100 * sp, 2) + '%'} over the steps.`);
    }
  }
  lines.push('', `JSON: ${r.files.json}${r.files.png ? `; plot: ${r.files.png}` : ''}; ${formatDuration(r.wallSeconds)} in all${r.estimateSeconds === null ? '' : ` (estimated ${formatDuration(r.estimateSeconds)})`}.`);
  return lines.join('\n');
}

/** One panel per sweep setting, time on the left axis and peak RSS on the right, both orders. */
export function sweepChartSvg(sweep: SweepResult[]): string {
  const width = 900, height = 480;
  const panels = sweep.map((sw, i) => {
    const pts = (order: 1 | 2, f: (m: Measurement) => number): [number, number][] =>
      sw.points.filter((p) => p.order === order).sort((a, b) => a.steps - b.steps).map((p) => [p.steps, f(p)]);
    const series: Series[] = [
      { name: 'first order: s/iter', points: pts(1, (m) => m.median), color: '#1f77b4', markers: true },
      { name: 'second order: s/iter', points: pts(2, (m) => m.median), color: '#d62728', markers: true },
      { name: 'first order: peak RSS MiB (right)', points: pts(1, (m) => m.peakRssMiB), color: '#1f77b4', axis: 'right', dashed: true, markers: true },
      { name: 'second order: peak RSS MiB (right)', points: pts(2, (m) => m.peakRssMiB), color: '#d62728', axis: 'right', dashed: true, markers: true },
    ];
    const ref = sw.referenceMemoryMiB?.[2];
    if (ref) series.push({ name: 'reference (PyTorch) 2nd-order peak MiB (right)', points: Object.entries(ref).map(([k, v]) => [Number(k), v]), color: '#999999', axis: 'right', dashed: true });
    const rss = series.filter((s) => s.axis === 'right').flatMap((s) => s.points.map((p) => p[1]));
    const svg = lineChartSvg(series, {
      title: `${sw.setting}: time and peak memory against inner steps`, xLabel: 'inner steps', leftLabel: 'seconds per meta-iteration',
      rightLabel: 'peak RSS (MiB)', width, height, leftRange: [0, Math.max(...series.filter((s) => s.axis !== 'right').flatMap((s) => s.points.map((p) => p[1])), 1e-6) * 1.4],
      rightRange: [0, Math.max(...rss, 1) * 1.4],
    });
    return svg.replace('<svg ', `<svg y="${i * height}" `);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height * Math.max(1, sweep.length)}">\n${panels.join('\n')}\n</svg>`;
}

