// The sha256 the catalog records as a backup is written: uploads use it instead of hashing first, and never a stale one.
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uploadBackup } from '../../agent/offsite/transfer';
import { LocalFolderProvider } from '../../agent/providers/local';
import { isStorageError } from '../../shared/storage/index';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, filenameOf, startOffsiteAgent } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let remote: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startOffsiteAgent(pg);
  remote = await mkdtemp(join(tmpdir(), 'gem-recorded-sha-'));
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (remote) await rm(remote, { recursive: true, force: true });
});

const sha256Of = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

describe('the recorded sha256 of a backup file', () => {
  it('is recorded when the backup is made, is the file sha256, and stays out of the backup facts', async () => {
    const name = filenameOf(await backupNow(t));
    const path = t.agent.catalog.pathOf(name);
    expect(await t.agent.catalog.knownSha256(name)).toBe(await sha256Of(path));
    expect(Object.keys(await t.agent.catalog.info(name))).not.toContain('content');
    const stored = await uploadBackup(t.agent, new LocalFolderProvider(remote), name);
    expect(stored.sha256).toBe(await sha256Of(path));
    expect(await sha256Of(join(remote, name))).toBe(await sha256Of(path));
  });

  it('is not used once the file changed (other mtime): the upload hashes the file again and records that', async () => {
    const [first, second] = [filenameOf(await backupNow(t)), filenameOf(await backupNow(t))];
    // Another backup's bytes under the first name, as a file replaced behind the agent's back would be.
    await copyFile(t.agent.catalog.pathOf(second), t.agent.catalog.pathOf(first));
    await utimes(t.agent.catalog.pathOf(first), new Date(), new Date(Date.now() + 5000));
    expect(await t.agent.catalog.knownSha256(first)).toBeUndefined();
    const stored = await uploadBackup(t.agent, new LocalFolderProvider(remote), first);
    const now = await sha256Of(t.agent.catalog.pathOf(first));
    expect(stored.sha256).toBe(now);
    expect(await t.agent.catalog.knownSha256(first)).toBe(now);
  });

  it("refuses a file that no longer matches the sha256 recorded for it with 'integrity'", async () => {
    const name = filenameOf(await backupNow(t));
    const path = t.agent.catalog.pathOf(name);
    // A record that claims other bytes for the file as it is now (what bit rot after the backup looks like).
    await t.agent.catalog.recordSha256(name, 'ab'.repeat(32));
    const error = await uploadBackup(t.agent, new LocalFolderProvider(join(remote, 'rot')), name, {
      retry: { attempts: 1 },
    }).catch((caught: unknown) => caught);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await sha256Of(path)).not.toBe('ab'.repeat(32));
  });
});
