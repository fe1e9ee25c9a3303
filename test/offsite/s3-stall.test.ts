// An S3 server that freezes (SIGSTOP) in the middle of a sync's upload: the job ends failed, naming the
// endpoint, instead of holding the job lock for many minutes; nothing is stored under the backup's name,
// and once the server runs again the next sync uploads it. The provider's stall limit is shortened to 2 s
// through its options; the transfer's own retries and stall watchdog keep their defaults.
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { S3Provider } from '../../agent/providers/s3';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { startAll } from '../services/start-all';
import { backupNow, filenameOf, runJob, s3Section, startOffsiteAgent } from './helpers';

const MIB = 1024 * 1024;
let pg: TestPostgres;
let s3: S3Service;
let t: TestAgent;
let frozen: number | undefined;

/** The pid of this file's s3rver: the process whose command line names its data folder. */
function s3rverPid(): number {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args.some((a) => a.endsWith('s3rver.js')) && args.includes(s3.root)) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error('the s3rver process was not found');
}

function resume(): void {
  if (frozen !== undefined) process.kill(frozen, 'SIGCONT');
  frozen = undefined;
}

beforeAll(async () => {
  ({ pg, s3 } = await startAll({ pg: startPostgres, s3: startS3 }));
  t = await startOffsiteAgent(pg, {
    providerOverrides: { s3: { stallTimeoutMs: 2000, partSize: 5 * MIB } },
  });
  // Random bytes do not compress: a backup of eight parts, so that parts are still to be sent when the
  // first is acknowledged (four in flight); more would only make every step slower.
  await writeFile(join(t.agent.sources.scriptsDir, 'noise.bin'), randomBytes(40 * MIB));
  await t.agent.settings.update({ offsite: { s3: s3Section(s3, { prefix: 'stall' }) } });
}, 120_000);

afterAll(async () => {
  resume();
  await t?.close();
  await Promise.all([pg?.stop(), s3?.stop()]);
});

describe('an S3 server frozen during an upload', () => {
  it('ends the sync failed with a line naming the endpoint; the next sync, once it runs again, uploads it', async () => {
    const name = filenameOf(await backupNow(t));
    const started = await offsiteServiceFor(t.agent).startSync('s3');
    // Frozen once the upload is well under way: its first part acknowledged (progress counts those).
    for (;;) {
      const job = t.agent.jobs.get(started.id)!;
      if (job.state !== 'running')
        throw new Error(`the sync ended before the freeze: ${JSON.stringify(job)}`);
      if (job.phase === `uploading ${name}` && job.bytesDone > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    frozen = s3rverPid();
    process.kill(frozen, 'SIGSTOP');
    const job = await t.agent.jobs.waitFor(started.id);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toBe(
      `1 transfer failed; nothing was pruned. ${name}: The storage at ${s3.endpoint} stopped answering during the upload of ${name}: it took no data for 2 s, so the upload was given up (nothing was stored under its name). Check that the server is running and reachable; the next sync or backup uploads it again.`,
    );
    // The job lock is free again: another job may start.
    expect(t.agent.jobs.active()).toEqual([]);

    resume();
    const provider = new S3Provider({
      endpoint: s3.endpoint,
      region: s3.region,
      bucket: s3.bucket,
      prefix: 'stall',
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
      forcePathStyle: true,
    });
    try {
      // Nothing half-uploaded under its name (s3rver keeps the parts: it cannot list or abort uploads).
      expect((await provider.list()).map((o) => o.name)).toEqual([]);
      const again = await runJob(t, 'POST', '/offsite/s3/sync');
      expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
      expect((await provider.list()).map((o) => o.name)).toEqual([name]);
    } finally {
      await provider.close();
    }
  }, 60_000);
});
