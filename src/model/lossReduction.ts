// The loss weight w of MATH.md: 'mean' averages over a set's examples; 'sum-over-shots'
// (the original code) sums and divides by the shots K, for the support and the query set
// alike, which makes the inner step N times larger than with 'mean'.
export type LossReduction = 'mean' | 'sum-over-shots';

export function lossWeight(reduction: LossReduction, examples: number, shots: number): number {
  if (reduction === 'mean') return 1 / examples;
  if (reduction === 'sum-over-shots') return 1 / shots;
  throw new Error(`unknown loss reduction '${reduction as string}': expected mean or sum-over-shots`);
}
