// One bench measurement in a fresh process (forked by src/bench/order.ts), so the peak
// resident memory of one setting does not leak into the next. Receives a WorkerJob as its
// first message, sends {type: 'iteration'} after every timed call and a WorkerReply last.
// The inputs go through the image cache as training does: random uint8 pixels, random
// indices (and, for omniglot, rotations) per meta-iteration.
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createEngine, loadAddon, type MetaBatch } from '../native/engine.js';
import type { BenchSetting } from './settings.js';

export interface WorkerRun {
  order: 1 | 2;
  steps: number;
  warmup: number;     // untimed calls first (the first call allocates the workspace)
  repeats: number;    // timed calls
  /** then this many timed calls as the trainer makes them on 9 iterations of 10: no pre-adaptation query pass */
  trainingRepeats?: number;
}

export interface WorkerJob {
  setting: BenchSetting;
  runs: WorkerRun[];
  seed: number;
}

export interface WorkerRunResult extends WorkerRun {
  seconds: number[];        // one per timed call
  trainingSeconds: number[];  // one per trainingRepeats call
  warmupSeconds: number[];
  workspaceBytes: number;
  taskGroup: number;
}

export interface WorkerReply {
  ok: true;
  runs: WorkerRunResult[];
  peakRssMiB: number;       // process.resourceUsage().maxRSS at the end, MiB
  baselineRssMiB: number;   // the same before the engine was made (Node and the addon)
  cacheMiB: number;         // the random image cache
  threads: number;
  parameterCount: number;
  bytesPerScalar: number;
  inputShape: [number, number, number];
}

export interface WorkerFailure { ok: false; error: string }

const maxRssMiB = () => process.resourceUsage().maxRSS / 1024;  // KiB on Linux and macOS

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

export async function measureInThisProcess(job: WorkerJob, onIteration?: () => void): Promise<WorkerReply> {
  const baselineRssMiB = maxRssMiB();
  const s = job.setting;
  // the device comes from the parent (bench order --device) through the environment
  const device = (process.env.MAML_BENCH_DEVICE ?? 'cpu') as 'cpu' | 'cuda';
  const engine = createEngine({ arch: s.arch, ways: s.ways, imageSize: s.imageSize, filters: s.filters, device });
  const input = engine.layers()[0].in;
  const [c, h, w] = input;
  const support = s.ways * s.shots, query = s.ways * s.queries;
  const count = s.metaBatch * (support + query);   // distinct images of one meta-batch
  const pixels = new Uint8Array(count * c * h * w);
  for (let off = 0; off < pixels.length; off += 65536) randomFillSync(pixels, off, Math.min(65536, pixels.length - off));
  engine.setImageCache(pixels, count, c, h, w, false);
  const theta = engine.initialize(job.seed);
  const random = rng(job.seed + 1);
  const rotate = s.arch === 'omniglot';

  const batch = (): MetaBatch => {
    const order = Int32Array.from({ length: count }, (_, i) => i);
    for (let i = count - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    const set = (from: number, size: number, perClass: number) => {
      const n = s.metaBatch * size;
      const indices = order.slice(from, from + n);
      const labels = Int32Array.from({ length: n }, (_, i) => Math.floor((i % size) / perClass));
      const rotations = rotate ? Uint8Array.from({ length: n }, () => Math.floor(random() * 4)) : undefined;
      return { indices, labels, rotations, size, lossWeight: 1 / s.shots };   // sum-over-shots, as the presets
    };
    return { tasks: s.metaBatch, support: set(0, support, s.shots), query: set(s.metaBatch * support, query, s.queries) };
  };

  const runs: WorkerRunResult[] = [];
  for (const run of job.runs) {
    const loop = { steps: run.steps, stepSizes: s.innerLr, order: run.order, measureBefore: true };
    const seconds: number[] = [], warmupSeconds: number[] = [], trainingSeconds: number[] = [];
    let workspaceBytes = 0, taskGroup = 0;
    const timedCall = async (measureBefore: boolean): Promise<number> => {
      const b = batch();
      const start = performance.now();
      const result = await engine.metaGradient(theta, b, { ...loop, measureBefore });
      const t = (performance.now() - start) / 1000;
      workspaceBytes = Math.max(workspaceBytes, result.workspaceBytes);
      taskGroup = result.taskGroup;
      onIteration?.();
      return t;
    };
    for (let i = 0; i < run.warmup + run.repeats; i++) (i < run.warmup ? warmupSeconds : seconds).push(await timedCall(true));
    for (let i = 0; i < (run.trainingRepeats ?? 0); i++) trainingSeconds.push(await timedCall(false));
    runs.push({ ...run, seconds, trainingSeconds, warmupSeconds, workspaceBytes, taskGroup });
  }
  return {
    ok: true, runs, peakRssMiB: maxRssMiB(), baselineRssMiB, cacheMiB: pixels.byteLength / 1048576,
    threads: loadAddon().threads(), parameterCount: engine.parameterCount, bytesPerScalar: engine.dtype === 'float64' ? 8 : 4, inputShape: input,
  };
}

if (process.send) {
  process.once('message', (job: WorkerJob) => {
    measureInThisProcess(job, () => process.send!({ type: 'iteration' }))
      .then((reply) => process.send!(reply, () => process.exit(0)))
      .catch((e: unknown) => {
        const failure: WorkerFailure = { ok: false, error: e instanceof Error ? e.message : String(e) };
        process.send!(failure, () => process.exit(1));
      });
  });
}
