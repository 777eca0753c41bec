// One progress display for prepare, train, eval and bench: a cli-progress bar with rate
// and ETA on a terminal; on anything else (CI logs, pipes) plain lines, at most one every
// ~5 s plus the last, because cli-progress prints nothing there by default and a redrawn
// bar would fill a log with carriage returns.
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, fields?: Record<string, string | number>): void;
  stop(): void;
}

export const PLAIN_INTERVAL_MS = 5000;

function formatFields(fields: Record<string, string | number> | undefined): string {
  if (!fields) return '';
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? formatNumber(v) : v}`)
    .join(' ');
}

function formatNumber(v: number): string {
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(a < 1 ? 3 : 2);
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

export function createProgress(options: { total: number; label: string; stream?: NodeJS.WriteStream; now?: () => number }): Progress {
  const stream = options.stream ?? process.stderr;
  const now = options.now ?? Date.now;
  const total = Math.max(0, options.total);
  const start = now();
  let done = 0;
  let stopped = false;
  let fields: Record<string, string | number> | undefined;
  const rate = (): number => {
    const seconds = (now() - start) / 1000;
    return seconds > 0 ? done / seconds : 0;
  };

  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: `${options.label} [{bar}] {percentage}% {value}/{total} | {rate}/s | ETA {eta_formatted} {fields}`,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 50,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { rate: '0', fields: '' });
    return {
      update(value, newFields) {
        if (stopped) return;
        done = value;
        fields = newFields ?? fields;
        bar.update(value, { rate: formatNumber(rate()), fields: formatFields(fields) });
      },
      stop() {
        if (stopped) return;
        stopped = true;
        bar.stop();
      },
    };
  }

  let lastPrint = -Infinity;
  let lastPrinted = -1;
  const print = (): void => {
    const r = rate();
    const percent = total > 0 ? ((100 * done) / total).toFixed(1) : '100.0';
    const eta = r > 0 && done < total ? ` eta ${formatDuration((total - done) / r)}` : '';
    const extra = formatFields(fields);
    stream.write(
      `${options.label} ${done}/${total} (${percent}%) ${formatNumber(r)}/s elapsed ${formatDuration((now() - start) / 1000)}${eta}${extra ? ' ' + extra : ''}\n`,
    );
    lastPrint = now();
    lastPrinted = done;
  };
  return {
    update(value, newFields) {
      if (stopped) return;
      done = value;
      fields = newFields ?? fields;
      if (done >= total || now() - lastPrint >= PLAIN_INTERVAL_MS) print();
    },
    stop() {
      if (stopped) return;
      stopped = true;
      if (lastPrinted !== done) print();
    },
  };
}
