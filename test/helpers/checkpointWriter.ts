// Writes checkpoints in a loop until killed: each one's parameters all equal its iteration,
// so a reader can tell a whole file from a torn one.
import { saveCheckpoint } from '../../src/train/checkpoint.js';
import { createAdamState } from '../../src/train/adam.js';

const file = process.argv[2];
const size = 1 << 20;
const table = [{ name: 'w', shape: [size], offset: 0, size, adapted: true }];
for (let iteration = 1; ; iteration++) {
  saveCheckpoint(file, table, { config: { n: iteration }, iteration, parameters: new Float32Array(size).fill(iteration), adam: createAdamState(size), samplerState: {} });
}
