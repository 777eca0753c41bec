// Every command besides `gradient`, in the order `--help` lists them.
import type { CommandModule } from 'yargs';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const registeredCommands: CommandModule<any, any>[] = [];
