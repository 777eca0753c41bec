// Where the real data sets live for the tests that use them: $MAML_SHARED_DATA, else
// ../shared/data beside the repository. Tests skip (with this message) when it is absent.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repositoryRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function sharedData(sub: string): { dir?: string; skip?: string } {
  const base = process.env.MAML_SHARED_DATA ?? path.resolve(repositoryRoot, '..', 'shared', 'data');
  const dir = path.join(base, sub);
  if (!existsSync(dir)) return { skip: `real data not found at ${dir} (set MAML_SHARED_DATA to the folder holding ${sub}/)` };
  return { dir };
}
