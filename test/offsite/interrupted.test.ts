// A server that freezes in the middle of a sync upload (> 20 MB backup): the job fails, nothing half-written is visible, the next sync completes.
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../../agent/jobs/runner';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { databaseUrl } from '../../agent/system/postgres-tools';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, FAST, filenameOf, runJob, startOffsiteAgent } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startOffsiteAgent(pg);
});
afterAll(async () => {
  sshd?.resume();
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

const sha256 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

/** Resolves once a temp file (the upload in progress) in `dir` holds at least `bytes`. */
async function uploadUnderway(dir: string, bytes: number): Promise<void> {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; ) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith('.tmp-')) continue;
      const size = await stat(join(dir, name)).then(
        (s) => s.size,
        () => 0,
      );
      if (size >= bytes) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  throw new Error(
    `no upload of ${bytes} bytes seen in ${dir}: ${(await readdir(dir).catch(() => [])).join(', ')}`,
  );
}

describe('a server frozen mid-upload', () => {
  it('fails the sync job, leaves the local backup intact and no partial object under the final name; the next sync completes', async () => {
    // About 24 MB of random bytes that no compression shrinks, so the upload takes a while.
    await withSql(databaseUrl(t.agent.sources.conn), async (sql) => {
      await sql`create table noise (id int primary key, data bytea not null)`;
      await sql`insert into noise select g, (select string_agg(uuid_send(gen_random_uuid()), ''::bytea) from generate_series(1, 64) where g > 0) from generate_series(1, 24000) g`;
    });
    const name = filenameOf(await backupNow(t));
    const local = t.agent.catalog.pathOf(name);
    const size = (await stat(local)).size;
    expect(size).toBeGreaterThan(20 * 1024 * 1024);
    const digest = await sha256(local);

    await t.agent.settings.update({
      offsite: {
        sftp: {
          enabled: true,
          host: sshd.host,
          port: sshd.port,
          username: sshd.passwordUser.username,
          remotePath: 'frozen',
          auth: { password: sshd.passwordUser.password },
        },
      },
    });
    const folder = join(sshd.root, 'frozen');
    // Once the server is frozen every wait of this sync ends in a failure, however long: it gives up
    // after 1 s without progress and 1 s without an answer (FAST's 3 s and 2 s for the next sync).
    offsiteServiceFor(t.agent, {
      ...FAST,
      stallTimeoutMs: 1000,
      providerOverrides: { ...FAST.providerOverrides, sftp: { timeoutMs: 1000 } },
    });
    const res = await call(t, 'POST', '/offsite/sftp/sync');
    expect(res.status).toBe(202);
    await uploadUnderway(folder, 1024 * 1024);
    sshd.pause();
    let job: Job;
    try {
      job = await t.agent.jobs.waitFor(res.body.jobId);
    } finally {
      sshd.resume();
      offsiteServiceFor(t.agent, FAST);
    }
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toContain(`${name}: Cannot reach 127.0.0.1 on port ${sshd.port}`);
    expect((await offsiteServiceFor(t.agent).status()).sftp.lastSync).toMatchObject({
      ok: false,
      uploaded: [],
    });

    // Local copy untouched; remotely at most a temp file, never the final name.
    expect(await sha256(local)).toBe(digest);
    const after = await readdir(folder);
    expect(after).not.toContain(name);
    // The temp file of the upload given up on, which the frozen server let it neither finish nor remove.
    const leftovers = after.filter((entry) => entry.startsWith('.tmp-'));
    expect(leftovers).toHaveLength(1);
    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.body.backups).toEqual([]);

    const next = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
    // It carries this installation's tag: the next sync removes it though it is minutes old, not hours.
    expect(next.result).toMatchObject({ uploaded: [name], sweptTemp: 1 });
    expect(await readdir(folder)).toEqual([name]);
    expect(await sha256(join(folder, name))).toBe(digest);
    const verify = await runJob(t, 'POST', `/backups/${name}/verify`);
    expect(verify.state).toBe('succeeded');
  });
});
