// Writes that never leave a half-written file under the real name: write a temporary file
// beside it, flush it to disk, then rename over the target (atomic on POSIX and NTFS).
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';

export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const temporary = `${file}.tmp-${process.pid}`;
  try {
    const fd = openSync(temporary, 'w');
    try {
      const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      let written = 0;
      while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, file);
  } catch (e) {
    try {
      rmSync(temporary, { force: true });
    } catch {
      // the temporary is not a plain file (something else made it); leave it
    }
    throw new Error(`could not write ${file}: ${(e as Error).message}`);
  }
}
