// The scheduled verification reads the newest local backup while a backup made beside it prunes: the backup
// being read stays until the verification is done with it, as one a verify job reads does. Real agent, real backups.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { pruneLocal } from '../../agent/backup/retention';
import type { Job } from '../../agent/jobs/runner';
import { startVerification } from '../../agent/verification/run';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

async function backup(kind: 'manual' | 'scheduled'): Promise<Job> {
  const job = await startBackup(t.agent, { kind });
  return t.agent.jobs.waitFor(job.id);
}

const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a prune while the scheduled verification reads a backup', () => {
  it('keeps the backup the verification reads; the next prune takes it', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    const first = await backup('manual');
    expect(first.state, first.error?.message).toBe('succeeded');
    const read = (first.result as { backup: { filename: string } }).backup.filename;
    expect(await localNames()).toEqual([read]);

    const catalog = t.agent.catalog;
    const info = catalog.info.bind(catalog);
    let reached!: () => void;
    const atRead = new Promise<void>((resolve) => {
      reached = resolve;
    });
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The verification lists the backups (its first look at the newest), then opens that one to read it
    // (the second): it waits there while a scheduled backup is made and prunes.
    let looks = 0;
    catalog.info = async (name) => {
      if (name === read && ++looks === 2) {
        catalog.info = info;
        reached();
        await released;
      }
      return info(name);
    };
    let verification: Job;
    let made: Job;
    try {
      verification = await startVerification(t.agent);
      await atRead;
      made = await backup('scheduled');
    } finally {
      catalog.info = info;
      release();
    }
    expect(made.state, made.error?.message).toBe('succeeded');
    const retention = (
      made.result as { followUps: Record<string, { ok: boolean; details?: { deleted?: string[] } }> }
    ).followUps.retention;
    expect(retention?.ok).toBe(true);
    expect(retention?.details?.deleted ?? []).not.toContain(read);
    expect(await localNames()).toContain(read);

    const ended = await t.agent.jobs.waitFor(verification.id);
    expect(ended.state, ended.error?.message).toBe('succeeded');
    const { results } = ended.result as {
      results: Array<{ target: string; ok: boolean; filename?: string }>;
    };
    expect(results[0]).toMatchObject({ target: 'local', ok: true, filename: read });

    // Read to the end: the next prune takes it, and its record goes with it.
    expect(await pruneLocal(t.agent)).toEqual([read]);
    expect(await localNames()).not.toContain(read);
    expect(await catalog.hasRecord(read)).toBe(false);
  }, 120_000);
});
