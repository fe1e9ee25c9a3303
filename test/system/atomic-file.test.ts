// writeFileAtomic: a write that fails leaves neither the final file nor its temp file behind.
import fs from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../agent/system/atomic-file';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-atomic-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A transform that refuses the first chunk it is given, as an upload's early header check does. */
function refuseAtOnce(): Transform {
  return new Transform({
    transform(_chunk, _encoding, callback) {
      callback(new Error('refused'));
    },
  });
}

describe('writeFileAtomic', () => {
  it('leaves no temp file when the source fails while the temp file is still being opened', async () => {
    // The write stream opens its file on its own; a source that fails at once rejects the pipeline
    // first. Opens are held back here (by 50 ms) so that this order is certain, not left to chance.
    const open = fs.open;
    fs.open = ((...args: Parameters<typeof fs.open>) => {
      setTimeout(() => (open as (...a: unknown[]) => void)(...args), 50);
    }) as typeof fs.open;
    try {
      const error = await writeFileAtomic(join(dir, 'upload'), [
        Readable.from([Buffer.from('x')]),
        refuseAtOnce(),
      ]).catch((e: unknown) => e);
      expect((error as Error).message).toBe('refused');
    } finally {
      fs.open = open;
    }
    // The held-back open has landed by now (it is awaited before the temp file is removed).
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await readdir(dir)).toEqual([]);
  });

  it('keeps the previous file and leaves no temp file when the check refuses the new one', async () => {
    const path = join(dir, 'state.json');
    await writeFile(path, 'old');
    const error = await writeFileAtomic(path, [Readable.from([Buffer.from('new')])], {
      check: async () => {
        throw new Error('bad');
      },
    }).catch((e: unknown) => e);
    expect((error as Error).message).toBe('bad');
    expect(await readdir(dir)).toEqual(['state.json']);
    expect(await readFile(path, 'utf8')).toBe('old');
  });

  it('writes the new content under the final name', async () => {
    const path = join(dir, 'state.json');
    await writeFile(path, 'old');
    await writeFileAtomic(path, [Readable.from([Buffer.from('new')])]);
    expect(await readdir(dir)).toEqual(['state.json']);
    expect(await readFile(path, 'utf8')).toBe('new');
  });

  it('exclusive: never replaces a file that took the name while this one was checked; nothing of it is left', async () => {
    // Two uploads of one name: the other lands after this one's last look, before its rename.
    const path = join(dir, 'gem-backup-2026-01-01-000000.tar.gz');
    const kept = await writeFileAtomic(path, [Readable.from([Buffer.from('second')])], {
      exclusive: true,
      check: async () => {
        await writeFile(path, 'first');
      },
    });
    expect(kept).toBe(false);
    expect(await readFile(path, 'utf8')).toBe('first');
    expect(await readdir(dir)).toEqual(['gem-backup-2026-01-01-000000.tar.gz']);
  });

  it('exclusive: writes the new file under a free name, once, with no temp file left', async () => {
    const path = join(dir, 'gem-backup-2026-01-01-000000.tar.gz');
    expect(await writeFileAtomic(path, [Readable.from([Buffer.from('new')])], { exclusive: true })).toBe(
      true,
    );
    expect(await readdir(dir)).toEqual(['gem-backup-2026-01-01-000000.tar.gz']);
    expect(await readFile(path, 'utf8')).toBe('new');
    expect((await fs.promises.stat(path)).nlink).toBe(1);
  });
});
