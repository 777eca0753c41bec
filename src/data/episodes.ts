// On-the-fly episode sampling shared by every data set. The sampler only hands out image
// indices, rotations and labels; the native learner gathers the pixels itself.
//
// Per task: N distinct classes; for each, K+Q distinct images (the first K support, the
// rest query, so the two are disjoint); labels are a random permutation of 0..N-1 over the
// chosen classes; with `rotate`, one quarter-turn count 0..3 per class, shared by its
// support and query images (as the original's per-class rotation augmentation).
//
// One xoroshiro128+ stream (pure-rand) drives everything, so getState()/fromState() resume
// the exact same sequence. Nothing is pre-sampled: a call costs O(tasks * ways * (K+Q)).
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus, xoroshiro128plusFromState } from 'pure-rand/generator/xoroshiro128plus';

export interface EpisodeSamplerOptions {
  classes: { first: number; count: number }[];
  ways: number;
  shots: number;
  queries: number;
  rotate: boolean;
  seed: number;
}

export interface EpisodeSet {
  indices: Int32Array;
  rotations: Uint8Array;
  labels: Int32Array;
}

export interface EpisodeBatch {
  tasks: number;
  ways: number;
  shots: number;
  queries: number;
  /** Length tasks*ways*shots, task-major, then class (in label-slot order), then shot. */
  support: EpisodeSet;
  /** Length tasks*ways*queries, same order. */
  query: EpisodeSet;
}

export interface SamplerState {
  generator: 'xoroshiro128plus';
  rng: number[];
  seed: number;
  tasksSampled: number;
}

type Rng = ReturnType<typeof xoroshiro128plus>;

function checkCount(name: string, value: number, min: number): void {
  if (!Number.isInteger(value) || value < min) throw new Error(`EpisodeSampler: ${name} must be an integer >= ${min}, got ${value}`);
}

export class EpisodeSampler {
  private readonly classes: { first: number; count: number }[];
  private readonly ways: number;
  private readonly shots: number;
  private readonly queries: number;
  private readonly rotate: boolean;
  private readonly seed: number;
  private rng: Rng;
  private tasksSampled = 0;
  // Scratch for partial Fisher-Yates draws: the swaps are undone after each draw, so the
  // arrays stay the identity and a draw costs O(picked), not O(population).
  private readonly classScratch: Int32Array;
  private imageScratch: Int32Array;

  constructor(options: EpisodeSamplerOptions) {
    checkCount('ways', options.ways, 1);
    checkCount('shots', options.shots, 1);
    checkCount('queries', options.queries, 0);
    if (!Number.isInteger(options.seed)) throw new Error(`EpisodeSampler: seed must be an integer, got ${options.seed}`);
    const need = options.shots + options.queries;
    if (options.classes.length < options.ways) {
      throw new Error(`EpisodeSampler: ${options.ways}-way tasks need at least ${options.ways} classes, the split has ${options.classes.length}`);
    }
    let maxCount = 0;
    options.classes.forEach((c, i) => {
      if (!Number.isInteger(c.first) || c.first < 0 || !Number.isInteger(c.count)) {
        throw new Error(`EpisodeSampler: class ${i} has an invalid range first=${c.first} count=${c.count}`);
      }
      if (c.count < need) {
        throw new Error(
          `EpisodeSampler: class ${i} (images ${c.first}..${c.first + c.count - 1}) has ${c.count} images, fewer than shots+queries = ${options.shots}+${options.queries} = ${need}`,
        );
      }
      maxCount = Math.max(maxCount, c.count);
    });
    this.classes = options.classes.map((c) => ({ first: c.first, count: c.count }));
    this.ways = options.ways;
    this.shots = options.shots;
    this.queries = options.queries;
    this.rotate = options.rotate;
    this.seed = options.seed;
    this.rng = xoroshiro128plus(options.seed);
    this.classScratch = identity(this.classes.length);
    this.imageScratch = identity(maxCount);
  }

  static fromState(options: EpisodeSamplerOptions, state: SamplerState): EpisodeSampler {
    if (state.generator !== 'xoroshiro128plus' || !Array.isArray(state.rng) || state.rng.length !== 4) {
      throw new Error(`EpisodeSampler.fromState: not a sampler state saved by this version (${JSON.stringify(state).slice(0, 100)})`);
    }
    if (state.seed !== options.seed) {
      throw new Error(`EpisodeSampler.fromState: the state was saved with seed ${state.seed}, the options say seed ${options.seed}`);
    }
    const sampler = new EpisodeSampler(options);
    sampler.rng = xoroshiro128plusFromState(state.rng);
    sampler.tasksSampled = state.tasksSampled;
    return sampler;
  }

  getState(): SamplerState {
    return { generator: 'xoroshiro128plus', rng: [...this.rng.getState()], seed: this.seed, tasksSampled: this.tasksSampled };
  }

  sample(tasks: number): EpisodeBatch {
    checkCount('tasks', tasks, 1);
    const { ways, shots, queries } = this;
    const per = shots + queries;
    const support: EpisodeSet = {
      indices: new Int32Array(tasks * ways * shots),
      rotations: new Uint8Array(tasks * ways * shots),
      labels: new Int32Array(tasks * ways * shots),
    };
    const query: EpisodeSet = {
      indices: new Int32Array(tasks * ways * queries),
      rotations: new Uint8Array(tasks * ways * queries),
      labels: new Int32Array(tasks * ways * queries),
    };
    const chosen = new Int32Array(ways);
    const labels = new Int32Array(ways);
    const picks = new Int32Array(per);
    for (let t = 0; t < tasks; t++) {
      drawDistinct(this.rng, this.classScratch, this.classes.length, ways, chosen);
      drawDistinct(this.rng, identityInto(labels), ways, ways, labels); // a permutation of 0..N-1
      for (let w = 0; w < ways; w++) {
        const c = this.classes[chosen[w]!]!;
        const label = labels[w]!;
        const rotation = this.rotate ? uniformInt(this.rng, 0, 3) : 0;
        drawDistinct(this.rng, this.imageScratch, c.count, per, picks);
        const s0 = (t * ways + w) * shots;
        for (let k = 0; k < shots; k++) {
          support.indices[s0 + k] = c.first + picks[k]!;
          support.rotations[s0 + k] = rotation;
          support.labels[s0 + k] = label;
        }
        const q0 = (t * ways + w) * queries;
        for (let q = 0; q < queries; q++) {
          query.indices[q0 + q] = c.first + picks[shots + q]!;
          query.rotations[q0 + q] = rotation;
          query.labels[q0 + q] = label;
        }
      }
    }
    this.tasksSampled += tasks;
    return { tasks, ways, shots, queries, support, query };
  }
}

function identity(n: number): Int32Array {
  return identityInto(new Int32Array(n));
}

function identityInto(a: Int32Array): Int32Array {
  for (let i = 0; i < a.length; i++) a[i] = i;
  return a;
}

/**
 * Writes `k` distinct values of scratch[0..n) into out, in random order (a partial
 * Fisher-Yates shuffle), then undoes the swaps so scratch is unchanged. `out` may be
 * `scratch` itself when k === n (a full shuffle in place).
 */
function drawDistinct(rng: Rng, scratch: Int32Array, n: number, k: number, out: Int32Array): void {
  if (out === scratch) {
    for (let i = 0; i < k - 1; i++) {
      const j = uniformInt(rng, i, n - 1);
      const t = scratch[i]!;
      scratch[i] = scratch[j]!;
      scratch[j] = t;
    }
    return;
  }
  const swaps = new Int32Array(k);
  for (let i = 0; i < k; i++) {
    const j = uniformInt(rng, i, n - 1);
    swaps[i] = j;
    const t = scratch[i]!;
    scratch[i] = scratch[j]!;
    scratch[j] = t;
    out[i] = scratch[i]!;
  }
  for (let i = k - 1; i >= 0; i--) {
    const j = swaps[i]!;
    const t = scratch[i]!;
    scratch[i] = scratch[j]!;
    scratch[j] = t;
  }
}
