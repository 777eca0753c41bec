// Mean, standard deviation and the 95% confidence interval the original reports:
// ci95 = 1.96 * std / sqrt(tasks), with the population standard deviation (numpy's
// default, which the original's np.std uses).
export interface Summary {
  mean: number;
  std: number;
  ci95: number;
  count: number;
}

export function summarize(values: ArrayLike<number>): Summary {
  const n = values.length;
  if (n === 0) throw new Error('summarize: no values');
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[i];
  const mean = sum / n;
  let squares = 0;
  for (let i = 0; i < n; i++) squares += (values[i] - mean) ** 2;
  const std = Math.sqrt(squares / n);
  return { mean, std, ci95: (1.96 * std) / Math.sqrt(n), count: n };
}
