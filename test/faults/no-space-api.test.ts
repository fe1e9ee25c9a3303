/**
 * A full data folder under the running agent's HTTP app: starting a backup, pinning, folding the keys
 * banner answer 507 no_space with the one clear sentence (not 500 internal); a verify job fails with
 * the same code and words (not a raw ENOSPC); the job lock's temp file is not left behind; and a
 * start removes lock temp files a dead process left. The data dir is a small tmpfs, filled up.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { runProcess } from '../../agent/system/spawn';
import { buildCli } from '../cli/built-cli';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';
import { faultReport } from './report';

const SIZE_MB = 8;
const CLEAR = 'the disk is full: free some space and try again';
const report = faultReport('no-space-api', 'full data folder');

let pg: TestPostgres;
let t: TestAgent;
let root: string;
let dataDir: string;
let mounted = '';
let backupName: string;
const filler = () => join(dataDir, 'filler');

/** Writes zeros into `filler` until the tmpfs refuses more (ENOSPC). */
async function fillUp(): Promise<void> {
  const handle = await open(filler(), 'a');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) await handle.write(chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await handle.close();
  }
}

const lockTemps = async () => (await readdir(dataDir)).filter((n) => /^job\.lock\..*\.tmp$/.test(n));

async function expectNoSpace(res: Response): Promise<void> {
  const body = (await res.json()) as { error: { code: string; message: string } };
  expect(res.status, JSON.stringify(body)).toBe(507);
  expect(body.error).toEqual({ code: 'no_space', message: CLEAR });
}

beforeAll(async () => {
  pg = await startPostgres();
  root = await mkdtemp(join(tmpdir(), 'gem-faults-nospace-'));
  dataDir = join(root, 'data');
  await mkdir(dataDir);
  const result = await runProcess('mount', ['-t', 'tmpfs', '-o', `size=${SIZE_MB}m`, 'tmpfs', dataDir]);
  if (result.code !== 0) {
    throw new Error(
      `the no-space test mounts a ${SIZE_MB} MB tmpfs and needs root (or CAP_SYS_ADMIN): mount said ${result.stderr.trim()}`,
    );
  }
  mounted = dataDir;
  t = await startTestAgent(pg, { dataDir });
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  expect(res.status).toBe(202);
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  expect(job.error).toBeUndefined();
  backupName = (job.result as { backup: { filename: string } }).backup.filename;
  await fillUp();
});

afterAll(async () => {
  report.print();
  await t?.close();
  if (mounted) await runProcess('umount', [mounted]);
  await pg?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

describe('the data folder is full', () => {
  it('POST /backups answers 507 no_space and leaves no job.lock temp file', async () => {
    await expectNoSpace(await t.request('/api/v1/backups', { method: 'POST' }));
    report.inject();
    expect(await lockTemps()).toEqual([]);
    report.tried(true);
  });

  it('pinning a backup answers 507 no_space', async () => {
    await expectNoSpace(await t.request(`/api/v1/backups/${backupName}/pin`, { method: 'POST' }));
    report.inject();
    report.tried(true);
  });

  it('folding the keys banner answers 507 no_space', async () => {
    const before = await readdir(dataDir);
    await expectNoSpace(
      await t.request('/api/v1/keys/banner', {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ collapsed: true }),
      }),
    );
    report.inject();
    // Nothing half-written stays beside the state file.
    expect((await readdir(dataDir)).filter((n) => !before.includes(n))).toEqual([]);
    report.tried(true);
  });

  it('downloading the keys still gives the keys (plain and protected); the download is not recorded', async () => {
    const before = await readdir(dataDir);
    const plain = await t.request('/api/v1/keys/export');
    expect(plain.status, await plain.clone().text()).toBe(200);
    const file = (await plain.json()) as { keyring: { installationId: string } };
    expect(file.keyring.installationId).toBe(t.agent.keyring.installationId);
    const sealed = await t.request('/api/v1/keys/export', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ passphrase: 'a passphrase on a full disk' }),
    });
    expect(sealed.status, await sealed.clone().text()).toBe(200);
    expect(await sealed.json()).toHaveProperty('protected.kdf', 'scrypt');
    report.inject();
    // Not recorded: the page and health keep asking for the download, which is true of no saved file here.
    const status = (await (await t.request('/api/v1/keys/status')).json()) as { downloaded: boolean };
    expect(status.downloaded).toBe(false);
    expect((await readdir(dataDir)).filter((n) => !before.includes(n))).toEqual([]);
    report.tried(true);
  });

  it('gem-backup keys export -o elsewhere writes the keys and exits 0, warning that the download was not recorded', async () => {
    const built = await buildCli();
    const away = await tempDirForTest('gem-faults-nospace-keys-');
    const out = join(away, 'keys.json');
    const res = await runProcess(process.execPath, [built.path, 'keys', 'export', '-o', out], {
      env: {
        ...process.env,
        GEM_DATA_DIR: dataDir,
        DATABASE_URL: databaseUrl(t.agent.sources.conn),
        GEM_SCRIPTS_DIR: t.agent.sources.scriptsDir,
        GEM_CONFIG_DIR: t.agent.sources.configDir,
        GEM_PG_BIN: pg.binDir,
        NODE_ENV: 'test',
      },
    }).finally(() => built.remove());
    report.inject();
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout.trim()).toBe(`keys exported to ${out}`);
    expect(JSON.parse(await readFile(out, 'utf8'))).toHaveProperty(
      'keyring.installationId',
      t.agent.keyring.installationId,
    );
    expect(res.stderr).toContain(
      'warning: the download could not be recorded (the disk is full: free some space and try again)',
    );
    report.tried(true);
  });

  it('a verify job fails with no_space and the clear sentence, not a raw ENOSPC', async () => {
    // A verify takes no job lock: the job starts, and fails where it writes its result.
    const res = await t.request(`/api/v1/backups/${backupName}/verify`, { method: 'POST' });
    expect(res.status).toBe(202);
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.state).toBe('failed');
    expect(job.error).toEqual({ code: 'no_space', message: CLEAR });
    report.inject();
    expect(await lockTemps()).toEqual([]);
    report.tried(true);
  });

  it('with space again, the backup works', async () => {
    await rm(filler());
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    expect(res.status).toBe(202);
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.error).toBeUndefined();
    report.tried(true);
  });
});

describe('lock temp files left by a dead process', () => {
  it('are removed at the next start; a live writer’s is kept', async () => {
    await t.close();
    const old = new Date(Date.now() - 60_000);
    // Emptied by a full disk (the old leftover), and one whole but of a process that is gone.
    const empty = `job.lock.${randomUUID()}.tmp`;
    await writeFile(join(dataDir, empty), '');
    await utimes(join(dataDir, empty), old, old);
    const deadNonce = randomUUID();
    const dead = `job.lock.${deadNonce}.tmp`;
    await writeFile(
      join(dataDir, dead),
      JSON.stringify({ pid: 2 ** 22 + 17, nonce: deadNonce, what: 'backup', since: old.toISOString() }),
    );
    const claimNonce = randomUUID();
    const claim = `job.lock.takeover-h0123.${claimNonce}.tmp`;
    await writeFile(
      join(dataDir, claim),
      JSON.stringify({ pid: 2 ** 22 + 19, nonce: claimNonce, what: 'takeover', since: old.toISOString() }),
    );
    // A process that runs (pid 1), mid-write: its temp stays.
    const liveNonce = randomUUID();
    const live = `job.lock.${liveNonce}.tmp`;
    await writeFile(
      join(dataDir, live),
      JSON.stringify({ pid: 1, nonce: liveNonce, what: 'backup', since: new Date().toISOString() }),
    );
    t = await startTestAgent(pg, { dataDir, databaseUrl: t.agent.databaseUrl });
    expect(await lockTemps()).toEqual([live]);
    expect(JSON.parse(await readFile(join(dataDir, live), 'utf8')).nonce).toBe(liveNonce);
    await rm(join(dataDir, live));
    report.tried(true);
  });
});
