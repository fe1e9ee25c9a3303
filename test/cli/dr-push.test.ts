// `gem-backup dr push` against the real Worker under miniflare: it names the backup it pushes and its
// age before the upload and in its last line, and warns plainly when that backup or the newest local
// one is more than a day old (it still pushes).
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupInfo } from '../../agent/backup/catalog';
import { backupDeps, createBackup } from '../../agent/backup/create';
import type { DrFaults } from '../../agent/dr/client';
import { drServiceFor } from '../../agent/dr/service';
import type { DrState } from '../../agent/dr/state';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { DR_ENROLLMENT_TOKEN, type DrCloud, startDrCloud } from '../services/dr-cloud';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

const HOUR = 3600_000;
const DAY = 24 * HOUR;
let pg: TestPostgres;
let cloud: DrCloud;
let built: BuiltCli;
let dataDir: string;
let env: NodeJS.ProcessEnv;

const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], { env, cwd: process.cwd() });

/** The agent in this process on the CLI's data dir and database; closed before the CLI runs. */
function inProcessAgent(drOptions: Parameters<typeof drServiceFor>[1] = {}) {
  return startTestAgent(pg, {
    dataDir,
    databaseUrl: env.DATABASE_URL!,
    modules: [],
    env: {
      GEM_SCRIPTS_DIR: env.GEM_SCRIPTS_DIR!,
      GEM_CONFIG_DIR: env.GEM_CONFIG_DIR!,
      GEM_DR_URL: cloud.url,
      GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN,
    },
  }).then((t) => {
    drServiceFor(t.agent, drOptions);
    return t;
  });
}

/** Replaces the local backups with one made `ago` ms before now. */
async function onlyBackupMadeAgo(ago: number): Promise<BackupInfo> {
  const t = await inProcessAgent();
  try {
    for (const b of await t.agent.catalog.list()) await t.agent.catalog.delete(b.filename);
    return await createBackup(backupDeps(t.agent), standaloneContext(silentLogger), {
      now: new Date(Date.now() - ago),
    });
  } finally {
    await t.close();
  }
}

/** The size as the CLI writes it for people. */
function sizeWords(bytes: number): string {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

async function lastPush(): Promise<NonNullable<DrState['lastPush']>> {
  const state = JSON.parse(await readFile(join(dataDir, 'dr-state.json'), 'utf8')) as DrState;
  return state.lastPush!;
}

const backupFiles = async () =>
  (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz')).sort();

beforeAll(async () => {
  ({ pg, cloud, built } = await startAll({ pg: startPostgres, cloud: startDrCloud, built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-dr-push-'));
  env = { ...env, GEM_DR_URL: cloud.url, GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN, NODE_ENV: 'test' };
});
afterAll(async () => {
  await cloud?.dispose();
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('gem-backup dr push', () => {
  it('warns when the backup it pushes is itself more than a day old (an unfinished upload resumed)', async () => {
    // First, while the slot is empty (the cloud never takes a backup older than the one it holds).
    // A push that chose a backup as the clock stood 2.5 days ago, cut on every try of its one part:
    // the upload is kept to resume, and by now its backup is three days old.
    const old = await onlyBackupMadeAgo(3 * DAY);
    const faults: DrFaults = { cutUploads: { after: 0, times: 3, afterBytes: 1024 } };
    const t = await inProcessAgent({
      faults,
      now: () => new Date(Date.now() - 2.5 * DAY),
      tuning: { multipartThreshold: 1024, partSize: 5 * 1048576, partAttempts: 3, retryDelayMs: 10 },
    });
    try {
      const dr = drServiceFor(t.agent);
      const failed = await t.agent.jobs.waitFor((await dr.startPush()).id);
      expect(failed.error?.code, failed.error?.message).toBe('dependency_down');
      expect((await dr.state.get()).upload?.backupName).toBe(old.filename);
    } finally {
      await t.close();
    }

    const res = await cli('dr', 'push');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toBe(
      `warning: ${old.filename} is more than a day old (made 3 days ago): the DR cloud will hold data that old`,
    );
    const pushed = await lastPush();
    expect(pushed).toMatchObject({ outcome: 'succeeded', backup: old.filename, multipart: true });
    const what = `made 3 days ago, ${sizeWords(pushed.size!)}, resuming an unfinished upload`;
    expect(res.stdout.split('\n')).toEqual([
      `pushing ${old.filename} (${what})`,
      `pushed ${old.filename} (${what}, multipart) to the DR cloud`,
    ]);
  });

  it('names the backup it pushes and its age before the upload, and again in its last line', async () => {
    const made = await onlyBackupMadeAgo(3 * HOUR);
    const res = await cli('dr', 'push');
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const pushed = await lastPush();
    expect(pushed).toMatchObject({ outcome: 'succeeded', backup: made.filename, reused: true });
    const what = `made 3 h ago, ${sizeWords(pushed.size!)}, an existing backup`;
    expect(res.stdout.split('\n')).toEqual([
      `pushing ${made.filename} (${what})`,
      `pushed ${made.filename} (${what}) to the DR cloud`,
    ]);
  });

  it('warns plainly when the newest local backup is more than a day old, and still pushes (a new one)', async () => {
    const old = await onlyBackupMadeAgo(3 * DAY);
    const res = await cli('dr', 'push');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toBe(
      `warning: the newest local backup, ${old.filename}, is more than a day old (made 3 days ago; check that the automatic backups run): a temporary one was made for this push`,
    );
    const pushed = await lastPush();
    expect(pushed).toMatchObject({ outcome: 'succeeded', reused: false });
    expect(pushed.backup).not.toBe(old.filename);
    const what = `made less than a minute ago, ${sizeWords(pushed.size!)}, a new temporary backup, removed after`;
    expect(res.stdout.split('\n')).toEqual([
      `pushing ${pushed.backup} (${what})`,
      `pushed ${pushed.backup} (${what}) to the DR cloud`,
    ]);
    // The temporary backup went; the old one stays.
    expect(await backupFiles()).toEqual([old.filename]);
  });

  it('`dr push | true` (a reader gone before the first line) still pushes to the end, exit 0', async () => {
    await onlyBackupMadeAgo(2 * HOUR);
    const started = Date.now();
    const res = await runProcess(
      'bash',
      ['-c', `"${process.execPath}" "${built.path}" dr push | true; echo "exit=\${PIPESTATUS[0]}" >&2`],
      { env, cwd: process.cwd() },
    );
    expect(res.stderr.trim()).toBe('exit=0');
    // Its "pushing" line went nowhere; the push went on to its end instead of stopping half-way.
    const pushed = await lastPush();
    expect(pushed.outcome).toBe('succeeded');
    expect(Date.parse(pushed.at)).toBeGreaterThanOrEqual(started);
  });

  it('on a terminal, the backup is named before its checksum is taken and its upload starts', async () => {
    const made = await onlyBackupMadeAgo(0);
    const command = [process.execPath, built.path, 'dr', 'push'].map((a) => `'${a}'`).join(' ');
    // util-linux `script`: stdout and stderr on one terminal, in the order they were written.
    const res = await runProcess('script', ['-qec', command, '/dev/null'], { env, cwd: process.cwd() });
    expect(res.code, res.stdout).toBe(0);
    const named = res.stdout.indexOf(`pushing ${made.filename} (made less than a minute ago, `);
    expect(named, res.stdout).toBeGreaterThan(-1);
    const hashing = res.stdout.indexOf('Computing the backup’s checksum');
    const uploading = res.stdout.indexOf('Uploading to Cloud Disaster Recovery');
    expect(hashing, res.stdout).toBeGreaterThan(named);
    expect(uploading, res.stdout).toBeGreaterThan(named);
    expect(res.stdout).toMatch(new RegExp(`pushed ${made.filename.replaceAll('.', '\\.')} \\(made `));
  });
});
