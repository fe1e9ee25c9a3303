/**
 * What the agent says when GEM's database fails under it, on a real cluster: a settings change on a
 * full database disk (a tablespace on a small tmpfs, filled up; PostgreSQL's disk_full 53100) answers
 * 507 no_space with the one sentence and logs what PostgreSQL said, never the query's values; another
 * failed query logs its cause too. A pg_dump whose server connection is ended mid-backup fails the
 * backup with dependency_down and a sentence, as a restore says it. A backup that does not fit is
 * refused with words that fit a download too.
 */
import { chmod, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { receiveUpload } from '../../agent/backup/upload';
import { createLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres, withSql } from '../services/postgres';

const CLEAR = 'the disk is full: free some space and try again';
/** A webhook URL is a credential: it must never reach the log. */
const SECRET_URL = 'https://hooks.example.com/services/T0/B0/fault-secret-xyz';

let pg: TestPostgres;
let t: TestAgent;
let root: string;
let mounted = '';
const lines: string[] = [];
const logged = () => lines.map((line) => JSON.parse(line) as Record<string, unknown>);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { log: createLogger({ write: (line) => lines.push(line) }) });
  root = await mkdtemp(join(tmpdir(), 'gem-faults-dberr-'));
  // The server's user reaches the tablespace's folder in it.
  await chmod(root, 0o755);
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (mounted) await runProcess('umount', [mounted]);
  if (root) await rm(root, { recursive: true, force: true });
});

const putSettings = () =>
  t.request('/api/v1/settings', {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      maintenance: { enabled: true, retentionDays: 30 },
      alerts: { webhooks: [{ url: SECRET_URL, secret: 'fault-signing-key-123' }] },
    }),
  });

describe("GEM's database fails a query", () => {
  it('on a full disk (53100), PUT /settings answers 507 no_space and the log says what PostgreSQL said', async () => {
    const url = t.agent.databaseUrl;
    // The tablespace's folder belongs to the server's user, as its data directory does.
    const dataDirectory = await withSql(
      url,
      async (sql) => (await sql`show data_directory`)[0]!.data_directory,
    );
    const owner = await stat(dataDirectory as string);
    const dir = join(root, 'space');
    await runProcess('mkdir', ['-p', dir]);
    const mount = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
    if (mount.code !== 0)
      throw new Error(
        `this test mounts a 1 MB tmpfs and needs root (or CAP_SYS_ADMIN): ${mount.stderr.trim()}`,
      );
    mounted = dir;
    await runProcess('chown', [`${owner.uid}:${owner.gid}`, dir]);
    await withSql(url, async (sql) => {
      await sql.unsafe(`create tablespace fault_full location '${dir}'`);
      await sql.unsafe('create table public.fault_fill (x text) tablespace fault_full');
      // Rows below the TOAST threshold: stored as they are, until the file cannot grow.
      const fill = `insert into public.fault_fill select repeat(md5(random()::text), 30) from generate_series(1, 50)`;
      let full = false;
      for (let i = 0; i < 1000 && !full; i++) {
        await sql.unsafe(fill).catch((error: { code?: string }) => {
          if (error.code !== '53100') throw error;
          full = true;
        });
      }
      expect(full).toBe(true);
      // Every write of the settings needs the full disk now: as when the database's own disk is full.
      await sql.unsafe(`create function public.fault_more() returns trigger language plpgsql as $$
        begin ${fill}; return new; end $$`);
      await sql.unsafe(`create trigger fault_more before insert or update on gem_backup.settings
        for each row execute function public.fault_more()`);
    });

    lines.length = 0;
    const res = await putSettings();
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(res.status, JSON.stringify(body)).toBe(507);
    expect(body.error).toEqual({ code: 'no_space', message: CLEAR });
    const line = logged().find((l) => l.msg === 'the disk is full');
    expect(line, lines.join('\n')).toBeDefined();
    expect(line!.cause).toMatchObject({ code: '53100' });
    expect((line!.cause as { message: string }).message).toMatch(
      /could not extend file .*No space left on device/,
    );
    expect(lines.join('\n')).not.toMatch(/fault-secret-xyz|fault-signing-key/);

    // Nothing was changed; with space again the same change works.
    await withSql(url, (sql) => sql.unsafe('drop trigger fault_more on gem_backup.settings'));
    expect((await putSettings()).status).toBe(200);
  });

  it('another failed query answers 500 internal and the log names its cause, without its values', async () => {
    const url = t.agent.databaseUrl;
    await withSql(url, async (sql) => {
      await sql.unsafe('create table public.fault_check (v int check (v > 0))');
      await sql.unsafe(`create or replace function public.fault_more() returns trigger language plpgsql as $$
        begin insert into public.fault_check values (-1); return new; end $$`);
      await sql.unsafe(`create trigger fault_more before insert or update on gem_backup.settings
        for each row execute function public.fault_more()`);
    });
    try {
      lines.length = 0;
      const res = await putSettings();
      expect(res.status).toBe(500);
      const line = logged().find((l) => l.msg === 'unexpected error');
      expect(line, lines.join('\n')).toBeDefined();
      expect(line!.cause).toMatchObject({ code: '23514' });
      expect((line!.cause as { message: string }).message).toMatch(/violates check constraint/);
      expect(lines.join('\n')).not.toMatch(/fault-secret-xyz|fault-signing-key/);
    } finally {
      await withSql(url, (sql) => sql.unsafe('drop trigger fault_more on gem_backup.settings'));
    }
  });
});

describe('pg_dump loses its server during a backup', () => {
  it('the backup fails with dependency_down and a sentence, and keeps nothing', async () => {
    const url = t.agent.databaseUrl;
    const before = await readdir(t.agent.paths.backups);
    // pg_dump waits for the lock, alive, until its connection is ended as a server restart ends it.
    const release = await holdTableLock(url, 'users');
    let jobId: string;
    try {
      const res = await t.request('/api/v1/backups', { method: 'POST' });
      expect(res.status).toBe(202);
      jobId = ((await res.json()) as { jobId: string }).jobId;
      await withSql(pg.cluster.url('postgres'), async (sql) => {
        for (let i = 0; ; i++) {
          const [found] = await sql`select pg_terminate_backend(pid) as ended from pg_stat_activity
            where application_name = 'pg_dump' and wait_event_type = 'Lock'`;
          if (found?.ended) break;
          if (i > 300) throw new Error('pg_dump never waited for the lock');
          await new Promise((r) => setTimeout(r, 50));
        }
      });
    } finally {
      await release();
    }
    const job = await t.agent.jobs.waitFor(jobId);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('dependency_down');
    expect(job.error?.message).toMatch(
      /^the connection to the database server was lost during the backup \(.+\); nothing was kept; try again once PostgreSQL runs$/,
    );
    expect(await readdir(t.agent.paths.backups)).toEqual(before);
  });
});

describe('a backup that does not fit on the disk', () => {
  it('is refused with words that fit an upload and a download', async () => {
    const name = 'gem-backup-2026-01-01-000000.tar.gz';
    const error = await receiveUpload(t.agent, name, Readable.from([]), { declaredSize: 2 ** 52 }).catch(
      (e: unknown) => e as { code: string; message: string },
    );
    expect(error).toMatchObject({ code: 'no_space' });
    expect((error as { message: string }).message).toMatch(
      /^not enough free disk space to store this backup: it is \d+ MB, only \d+ MB may be used/,
    );
  });
});
