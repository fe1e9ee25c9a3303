import { createReadStream, createWriteStream } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createdAtFromName } from '../../agent/backup/catalog';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { SEED_COUNTS } from '../../agent/db/seed';
import { type Job, standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';

let pg: TestPostgres;
let t: TestAgent;

async function waitJob(t: TestAgent, jobId: string): Promise<Job> {
  return t.agent.jobs.waitFor(jobId);
}

async function createOne(): Promise<{ job: Job; filename: string }> {
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  expect(res.status).toBe(202);
  const { jobId } = (await res.json()) as { jobId: string };
  const job = await waitJob(t, jobId);
  expect(job.error).toBeUndefined();
  expect(job.state).toBe('succeeded');
  return { job, filename: (job.result as { backup: { filename: string } }).backup.filename };
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('creating and verifying a backup against a real PostgreSQL', () => {
  it('creates a backup that lists, verifies, and decrypts offline into a real .tar.gz whose dump pg_restore reads', async () => {
    const { filename } = await createOne();
    expect(filename).toMatch(/^gem-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz$/);

    const list = (await (await t.request('/api/v1/backups')).json()) as Array<Record<string, unknown>>;
    expect(list[0]).toMatchObject({ filename, keyIds: [t.agent.keyring.activeKey.id], kind: 'manual' });
    expect(list[0]!.size).toBe((await stat(join(t.agent.paths.backups, filename))).size);

    const verify = await t.request(`/api/v1/backups/${filename}/verify`, { method: 'POST' });
    expect(verify.status).toBe(202);
    const job = await waitJob(t, ((await verify.json()) as { jobId: string }).jobId);
    expect(job.state).toBe('succeeded');

    // Offline decrypt through the CLI: only the file and an exported keys file.
    const out = await tempDirForTest('gem-decrypt-');
    const keysPath = join(out, 'keys.json');
    const exported = await t.request('/api/v1/keys/export');
    await writeFile(keysPath, await exported.text());
    const tarGz = join(out, 'out.tar.gz');
    const cli = await runProcess(
      'npx',
      [
        'tsx',
        'agent/cli.ts',
        'decrypt',
        join(t.agent.paths.backups, filename),
        '--keys',
        keysPath,
        '-o',
        tarGz,
      ],
      { env: { ...process.env, GEM_DATA_DIR: join(out, 'no-agent-here') } },
    );
    expect(cli.stderr).toBe('');
    expect(cli.code).toBe(0);

    const names: string[] = [];
    const extract = tar.extract();
    let manifest: { rowCounts: Record<string, number> } | undefined;
    extract.on('entry', (header, stream, next) => {
      names.push(header.name);
      const chunks: Buffer[] = [];
      if (header.name === 'manifest.json') stream.on('data', (d: unknown) => chunks.push(d as Buffer));
      if (header.name === 'database.dump') stream.pipe(createWriteStream(join(out, 'database.dump')));
      else stream.resume();
      stream.on('end', () => {
        if (header.name === 'manifest.json') manifest = JSON.parse(Buffer.concat(chunks).toString());
        next();
      });
    });
    await pipeline(createReadStream(tarGz), createGunzip(), extract);
    expect(names[0]).toBe('manifest.json');
    expect(names).toContain('database.dump');
    expect(names).toContain('scripts/drivers/sonos.js');
    expect(names).toContain('config/gem.json');
    expect(manifest!.rowCounts).toMatchObject({
      'public.devices': SEED_COUNTS.devices,
      'public.attribute_history': SEED_COUNTS.attribute_history,
      'public.attributes': SEED_COUNTS.attributes,
    });

    const listing = await runProcess(join(pg.binDir, 'pg_restore'), ['--list', join(out, 'database.dump')]);
    expect(listing.code).toBe(0);
    expect(listing.stdout).toContain('TABLE DATA public devices');
  });

  it('never replaces a backup that arrived under its name while it was being written: 409, the arrival kept', async () => {
    // A real backup, moved out of the folder: its name is free again, and its bytes are another backup of that name.
    const { filename } = await createOne();
    const path = join(t.agent.paths.backups, filename);
    const arrival = await readFile(path);
    await t.agent.catalog.delete(filename);
    const failure = await createBackup(backupDeps(t.agent), standaloneContext(silentLogger), {
      now: new Date(Date.parse(createdAtFromName(filename) ?? '')),
      // Once the new backup has its name, and before its file is in place, the arrival lands: an upload.
      beforeWrite: async (name) => {
        expect(name).toBe(filename);
        const uploaded = await t.request(`/api/v1/backups/upload?filename=${name}`, {
          method: 'POST',
          headers: { 'content-length': String(arrival.length) },
          body: arrival,
        });
        expect(uploaded.status).toBeLessThan(300);
      },
    }).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toMatchObject({ code: 'conflict' });
    expect((failure as Error).message).toMatch(/it was kept as it is, and this backup was not kept/);
    expect((await readFile(path)).equals(arrival)).toBe(true);
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toContain(filename);
  });

  it('keeps a backup whose record cannot be written once it is in place, and its next verify records it', async () => {
    await createOne();
    const records = t.agent.paths.backupRecords;
    // Written by the backup before: immutable, it cannot be replaced (as with its lock held too long, or a full disk).
    await runProcess('chattr', ['+i', records]).then((r) => expect(r.code, r.stderr).toBe(0));
    let filename: string;
    try {
      ({ filename } = await createOne());
      expect((await t.agent.catalog.list()).map((b) => b.filename)).toContain(filename);
      expect((await t.agent.catalog.info(filename)).verifiedAt).toBeUndefined();
    } finally {
      await runProcess('chattr', ['-i', records]);
    }
    const verify = await t.request(`/api/v1/backups/${filename}/verify`, { method: 'POST' });
    expect((await waitJob(t, ((await verify.json()) as { jobId: string }).jobId)).state).toBe('succeeded');
    expect((await t.agent.catalog.info(filename)).verifiedAt).toBeDefined();
  });

  it("leaves no temp files in the backups folder, and only the agent's user may read it", async () => {
    const files = await readdir(t.agent.paths.backups);
    expect(files.filter((f) => !/^gem-backup-.*\.tar\.gz$/.test(f))).toEqual([]);
    expect(files.length).toBeGreaterThan(0);
    for (const file of files)
      expect((await stat(join(t.agent.paths.backups, file))).mode & 0o777).toBe(0o600);
    expect((await stat(t.agent.paths.backups)).mode & 0o777).toBe(0o700);
  });

  it('fails a backup whose pg_dump fails, and lists nothing new', async () => {
    const before = await readdir(t.agent.paths.backups);
    const conn = t.agent.sources.conn;
    t.agent.sources.conn = { ...conn, database: 'no_such_database' };
    try {
      const res = await t.request('/api/v1/backups', { method: 'POST' });
      const job = await waitJob(t, ((await res.json()) as { jobId: string }).jobId);
      expect(job.state).toBe('failed');
      expect(job.error?.code).toBe('dependency_down');
    } finally {
      t.agent.sources.conn = conn;
    }
    expect(await readdir(t.agent.paths.backups)).toEqual(before);
  });

  it('refuses a second mutating job while one runs with 409', async () => {
    const first = await t.request('/api/v1/backups', { method: 'POST' });
    const second = await t.request('/api/v1/backups', { method: 'POST' });
    expect(second.status).toBe(409);
    expect(((await second.json()) as { error: { code: string } }).error.code).toBe('job_running');
    await waitJob(t, ((await first.json()) as { jobId: string }).jobId);
  });

  it('detects a flipped byte on verify', async () => {
    const { filename } = await createOne();
    const path = join(t.agent.paths.backups, filename);
    const bytes = await readFile(path);
    bytes[bytes.length - 100]! ^= 0x01;
    await writeFile(path, bytes);
    const res = await t.request(`/api/v1/backups/${filename}/verify`, { method: 'POST' });
    const job = await waitJob(t, ((await res.json()) as { jobId: string }).jobId);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('corrupt_backup');
  });
});
