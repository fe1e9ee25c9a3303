// What a restore says about a damaged backup: one line that says "damaged" once, names a truncated file
// as such where the reader can tell, and says that nothing was changed and to restore another copy.
import { randomBytes } from 'node:crypto';
import { copyFile, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tryParseHeader } from '../../shared/envelope';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, liveState, runRestore } from './helpers';

const NEXT_STEP =
  'nothing was changed: restore another copy (an older backup, or this one from another destination)';
/** AES-GCM tag after each chunk's bytes. */
const TAG = 16;

let pg: TestPostgres;
let t: TestAgent;
/** A backup of a few chunks: random bytes in a script do not compress. */
let big: string;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  await writeFile(join(t.agent.sources.scriptsDir, 'noise.bin'), randomBytes(3 * 1024 * 1024));
  big = await backupNow(t.agent, 'several chunks');
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** A copy of the backup, changed by `damage`, restored: the failed job's error. */
async function restoreDamaged(what: string, damage: (path: string, bytes: Buffer) => Promise<void>) {
  const path = join(t.dataDir, `${what}.tar.gz`);
  await copyFile(t.agent.catalog.pathOf(big), path);
  await damage(path, await readFile(path));
  const before = await liveState(t.agent);
  const job = await runRestore(t.agent, path);
  expect(job.state).toBe('failed');
  expect(await liveState(t.agent)).toEqual(before);
  expect(job.error?.code).toBe('corrupt_backup');
  const message = job.error?.message ?? '';
  expect(message.match(/damaged/g)).toHaveLength(1);
  return message;
}

describe('a damaged backup refused by a restore', () => {
  it('cut at a chunk boundary: it ends early (truncated), after that chunk', async () => {
    const message = await restoreDamaged('boundary', async (path, bytes) => {
      const parsed = tryParseHeader(bytes)!;
      await truncate(path, parsed.length + 2 * (parsed.header.core.chunkSize + TAG));
    });
    expect(message).toBe(`the backup is damaged: it ends early (truncated) after chunk 1; ${NEXT_STEP}`);
  });

  it('cut inside a chunk: truncated or changed, both named', async () => {
    const message = await restoreDamaged('inside', async (path, bytes) => {
      const parsed = tryParseHeader(bytes)!;
      await truncate(path, parsed.length + parsed.header.core.chunkSize + TAG + 1000);
    });
    expect(message).toBe(
      `the backup is damaged: its last chunk (chunk 1) fails its check: the file ends early (truncated) or was changed; ${NEXT_STEP}`,
    );
  });

  it('one byte changed in the first chunk', async () => {
    const message = await restoreDamaged('flipped', async (path, bytes) => {
      const parsed = tryParseHeader(bytes)!;
      bytes[parsed.length + 100]! ^= 0xff;
      await writeFile(path, bytes);
    });
    expect(message).toBe(
      `the backup is damaged: chunk 0 fails its check (its bytes were changed); ${NEXT_STEP}`,
    );
  });
});
