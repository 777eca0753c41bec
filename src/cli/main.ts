#!/usr/bin/env node
// `npx maml-native <command>`: flags are parsed here and handed to the package's API;
// the work itself lives in src/commands and below.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { gradientCommand } from './commands/gradient.js';
import { registeredCommands } from './commands/index.js';

const cli = yargs(hideBin(process.argv))
  .scriptName('maml-native')
  .usage('$0 <command> [options]\n\nMAML meta-training with a native core: exact second-order meta-gradients, Omniglot and MiniImagenet, ONNX export.')
  .command(gradientCommand);
for (const command of registeredCommands) cli.command(command);
cli
  .demandCommand(1, 'Give a command; `maml-native --help` lists them.')
  .strict()
  .recommendCommands()
  .wrap(Math.min(110, process.stdout.columns || 100))
  .fail((message, error, y) => {
    if (error) {
      process.stderr.write(`maml-native: ${error.message}\n`);
      if (process.env.MAML_DEBUG) process.stderr.write(`${error.stack}\n`);
    } else {
      process.stderr.write(`${y.help()}\n\nmaml-native: ${message}\n`);
    }
    process.exit(1);
  })
  .help()
  .alias('h', 'help')
  .version();

await cli.parseAsync();
