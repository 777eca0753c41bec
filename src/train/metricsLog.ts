// metrics.jsonl and metrics.csv (one row per iteration) and validation.jsonl in the run
// folder. On resume, rows past the checkpoint's iteration (written before a crash) are
// dropped, so the files describe exactly the run that the checkpoint continues.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../io/atomicFile.js';

export interface IterationMetrics {
  iteration: number;
  seconds: number;
  dataSeconds: number;
  metaLoss: number;
  supportLossBefore: number;
  queryAccuracyBefore: number;
  queryAccuracyAfter: number;
  supportAccuracyAfter: number;
}

export interface ValidationMetrics {
  iteration: number;
  tasks: number;
  steps: number;
  accuracy: number;
  loss: number;
}

const COLUMNS: (keyof IterationMetrics)[] = ['iteration', 'seconds', 'dataSeconds', 'metaLoss', 'supportLossBefore', 'queryAccuracyBefore', 'queryAccuracyAfter', 'supportAccuracyAfter'];

// Not-measured values (NaN in memory, null in JSON) are empty CSV cells.
const csvRow = (row: IterationMetrics) => COLUMNS.map((c) => (Number.isFinite(row[c] as number) ? row[c] : '')).join(',');

function readRows<T extends { iteration: number }>(file: string, upTo: number): T[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as T).filter((r) => r.iteration <= upTo);
}

export class MetricsLog {
  private readonly jsonl: string;
  private readonly csv: string;
  private readonly validationFile: string;
  private readonly iterations: IterationMetrics[];
  private readonly validations: ValidationMetrics[];
  private pending: string[] = [];
  private pendingCsv: string[] = [];

  constructor(runDir: string, startIteration: number) {
    this.jsonl = path.join(runDir, 'metrics.jsonl');
    this.csv = path.join(runDir, 'metrics.csv');
    this.validationFile = path.join(runDir, 'validation.jsonl');
    this.iterations = readRows<IterationMetrics>(this.jsonl, startIteration);
    this.validations = readRows<ValidationMetrics>(this.validationFile, startIteration);
    writeFileAtomic(this.jsonl, this.iterations.map((r) => `${JSON.stringify(r)}\n`).join(''));
    writeFileAtomic(this.csv, [COLUMNS.join(','), ...this.iterations.map((r) => csvRow(r))].join('\n') + '\n');
    writeFileAtomic(this.validationFile, this.validations.map((r) => `${JSON.stringify(r)}\n`).join(''));
  }

  iteration(row: IterationMetrics): void {
    this.iterations.push(row);
    this.pending.push(`${JSON.stringify(row)}\n`);
    this.pendingCsv.push(`${csvRow(row)}\n`);
    if (this.pending.length >= 20) this.flush();
  }

  validation(row: ValidationMetrics): void {
    this.validations.push(row);
    this.flush();
    appendFileSync(this.validationFile, `${JSON.stringify(row)}\n`);
  }

  flush(): void {
    if (this.pending.length === 0) return;
    appendFileSync(this.jsonl, this.pending.join(''));
    appendFileSync(this.csv, this.pendingCsv.join(''));
    this.pending = [];
    this.pendingCsv = [];
  }

  close(): void {
    this.flush();
  }

  allIterations(): IterationMetrics[] {
    return this.iterations;
  }

  allValidations(): ValidationMetrics[] {
    return this.validations;
  }
}
