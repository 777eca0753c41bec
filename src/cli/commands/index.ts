// Every command besides `gradient`, in the order `--help` lists them.
import type { CommandModule } from 'yargs';
import { prepareCommand } from './prepare.js';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { exportCommand, predictCommand } from './export.js';
import { sinusoidCommand } from './sinusoid.js';
import { benchCommand } from './bench.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const registeredCommands: CommandModule<any, any>[] = [prepareCommand, trainCommand, evalCommand, sinusoidCommand, exportCommand, predictCommand, benchCommand];
