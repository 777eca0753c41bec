// The paper's regression family: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi],
// x ~ U[-5, 5], K support and K query points per task, sampled on the fly from a seeded
// xoroshiro128+ stream whose state is saved for an exact resume.
import { xoroshiro128plus, xoroshiro128plusFromState } from 'pure-rand/generator/xoroshiro128plus';
import type { MetaBatch } from '../native/engine.js';

export const AMPLITUDE: [number, number] = [0.1, 5.0];
export const PHASE: [number, number] = [0, Math.PI];
export const INPUT_RANGE: [number, number] = [-5, 5];

export interface SinusoidTask {
  amplitude: number;
  phase: number;
}

export interface SinusoidState {
  generator: 'xoroshiro128plus';
  rng: number[];
  seed: number;
}

export function sinusoid(task: SinusoidTask, x: number): number {
  return task.amplitude * Math.sin(x - task.phase);
}

export class SinusoidSampler {
  private rng: ReturnType<typeof xoroshiro128plus>;

  constructor(readonly seed: number, state?: SinusoidState) {
    this.rng = state ? xoroshiro128plusFromState(state.rng) : xoroshiro128plus(seed);
  }

  /** A uniform double in [0, 1) from 53 random bits. */
  uniform(): number {
    const high = this.rng.next() >>> 0, low = this.rng.next() >>> 0;
    return ((high >>> 5) * 67108864 + (low >>> 6)) / 9007199254740992;
  }

  between([lo, hi]: [number, number]): number {
    return lo + (hi - lo) * this.uniform();
  }

  task(): SinusoidTask {
    return { amplitude: this.between(AMPLITUDE), phase: this.between(PHASE) };
  }

  /** tasks x (support, query) sets of `points` each, with the task parameters. */
  sample(tasks: number, supportPoints: number, queryPoints: number): { batch: MetaBatch; tasks: SinusoidTask[] } {
    const family: SinusoidTask[] = [];
    const make = (points: number) => ({ images: new Float32Array(tasks * points), targets: new Float32Array(tasks * points) });
    const s = make(supportPoints), q = make(queryPoints);
    for (let t = 0; t < tasks; t++) {
      const task = this.task();
      family.push(task);
      for (const [set, points] of [[s, supportPoints], [q, queryPoints]] as const) {
        for (let i = 0; i < points; i++) {
          const x = this.between(INPUT_RANGE);
          set.images[t * points + i] = x;
          set.targets[t * points + i] = sinusoid(task, x);
        }
      }
    }
    return {
      batch: {
        tasks,
        support: { ...s, size: supportPoints, lossWeight: 1 / supportPoints },
        query: { ...q, size: queryPoints, lossWeight: 1 / queryPoints },
      },
      tasks: family,
    };
  }

  getState(): SinusoidState {
    return { generator: 'xoroshiro128plus', rng: [...this.rng.getState()], seed: this.seed };
  }
}
