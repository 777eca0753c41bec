// `node dist/bench/order.js [--quick] [--tiny] [--device cpu|cuda] [--settings NAME...] [--out DIR]`:
// the same measurement as `maml-native bench order` (src/bench/order.ts), without the CLI.
import { parseArgs } from 'node:util';
import { formatOrderBench, runOrderBench, type BenchDevice } from '../src/bench/order.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    device: { type: 'string', default: 'cpu' },
    settings: { type: 'string', multiple: true },
    quick: { type: 'boolean', default: false },
    tiny: { type: 'boolean', default: false },
    out: { type: 'string' },
    repeats: { type: 'string' },
    warmup: { type: 'string' },
  },
});

try {
  const result = await runOrderBench({
    device: values.device as BenchDevice,
    settings: [...(values.settings ?? []), ...positionals],
    quick: values.quick, tiny: values.tiny, out: values.out,
    repeats: values.repeats === undefined ? undefined : Number(values.repeats),
    warmup: values.warmup === undefined ? undefined : Number(values.warmup),
  });
  process.stdout.write(`${formatOrderBench(result)}\n`);
} catch (e) {
  process.stderr.write(`bench/order: ${(e as Error).message}\n`);
  process.exit(1);
}
