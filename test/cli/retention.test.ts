// `gem-backup pin|unpin NAME` and `gem-backup retention [resume]`: what the page's pin buttons, retention
// preview and "Resume pruning" do, for an owner who only has a shell; `list` shows the pins.
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupInfo } from '../../agent/backup/catalog';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { retentionPreview } from '../../agent/http/routes/settings';
import { standaloneContext } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli, hasOpen, interruptedWhileSyncing } from './built-cli';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let built: BuiltCli;

const HOUR = 3600_000;
const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], { env, cwd: process.cwd() });

/** The agent in this process on the CLI's data dir and database, for `fn` only (closed before the CLI runs). */
async function withInProcessAgent<T>(fn: (t: Awaited<ReturnType<typeof startTestAgent>>) => Promise<T>) {
  const t = await startTestAgent(pg, {
    dataDir,
    databaseUrl: env.DATABASE_URL!,
    modules: [],
    env: { GEM_SCRIPTS_DIR: env.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: env.GEM_CONFIG_DIR! },
  });
  try {
    return await fn(t);
  } finally {
    await t.close();
  }
}

const listed = async () => JSON.parse((await cli('list', '--json')).stdout) as BackupInfo[];

let made: string[] = [];

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: startPostgres, built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-retention-'));
  // Three backups, oldest first, and a retention of 2.
  made = await withInProcessAgent(async (t) => {
    const deps = backupDeps(t.agent);
    const ctx = standaloneContext(silentLogger);
    const names: string[] = [];
    for (const hoursAgo of [30, 20, 10]) {
      const b = await createBackup(deps, ctx, { now: new Date(Date.now() - hoursAgo * HOUR) });
      names.push(b.filename);
    }
    await t.agent.settings.update({ autoBackup: { maxBackups: 2 } });
    return names;
  });
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('gem-backup pin / unpin', () => {
  it('pins a backup: list shows it, and retention never names it for deletion', async () => {
    const [oldest, second] = made as [string, string, string];
    const before = await cli('retention');
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toContain('keeps the newest 2 backups');
    expect(before.stdout).toContain(`the next backup deletes 2: ${oldest}, ${second}`);

    const res = await cli('pin', oldest);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toBe(
      `pinned ${oldest}: retention never deletes it, here or offsite; unpin it to delete it`,
    );
    expect((await listed()).find((b) => b.filename === oldest)?.pinned).toBe(true);
    // The plain row says so after the kind.
    const rows = (await cli('list')).stdout.split('\n');
    expect(rows.find((r) => r.startsWith(oldest))).toMatch(/ manual pinned$/);
    expect(rows.find((r) => r.startsWith(second))).toMatch(/ manual$/);

    const after = await cli('retention');
    expect(after.stdout).toContain(`the next backup deletes 1: ${second}`);
    // --json is the API's preview, from the same function.
    const json = await cli('retention', '--json');
    expect(json.code).toBe(0);
    const api = await withInProcessAgent((t) => retentionPreview(t.agent));
    expect(JSON.parse(json.stdout)).toEqual(JSON.parse(JSON.stringify(api)));
    expect(api.nextBackup.delete.map((b) => b.filename)).toEqual([second]);

    const unpin = await cli('unpin', oldest);
    expect(unpin.code).toBe(0);
    expect(unpin.stdout).toMatch(/^unpinned /);
    const unpinned = (await listed()).find((b) => b.filename === oldest);
    expect(unpinned).toBeDefined();
    expect(unpinned?.pinned ?? false).toBe(false);
  });

  it('a pin stopped by Ctrl-C is finished and says so: exit 130, no temp file or lock left', async () => {
    const [oldest] = made as [string, string, string];
    // Each fsync held 1 s: the records' temp file is being synced when Ctrl-C comes.
    const { code, stdout, stderr } = await interruptedWhileSyncing(
      built,
      ['pin', oldest],
      env,
      async () => (await readdir(dataDir)).some((n) => n.startsWith('.tmp-backup-records.json')),
      'the records temp file',
    );
    expect(code).toBe(130);
    expect(stdout).toMatch(new RegExp(`^pinned ${oldest.replaceAll('.', '\\.')}: `));
    expect(stderr.trim()).toBe('gem-backup: interrupted too late to cancel: the pin had completed');
    expect((await listed()).find((b) => b.filename === oldest)?.pinned).toBe(true);
    expect((await readdir(dataDir)).filter((n) => n.startsWith('.tmp-') || n === 'job.lock')).toEqual([]);
    expect((await cli('unpin', oldest)).code).toBe(0);
  });

  it('a pin stopped by Ctrl-C before it writes is cancelled: nothing was changed, exit 130', async () => {
    const [oldest] = made as [string, string, string];
    const backup = join(dataDir, 'backups', oldest);
    const recordsBefore = await readFile(join(dataDir, 'backup-records.json'), 'utf8');
    // Each opening of the backup held 2 s: the pin is reading its header when Ctrl-C comes.
    const { code, stdout, stderr } = await interruptedWhileSyncing(
      built,
      ['pin', oldest],
      env,
      (pid) => hasOpen(pid, backup),
      'the backup being read',
      { holdOpenOf: backup, holdMs: 2000 },
    );
    expect(code).toBe(130);
    expect(stdout).toBe('');
    expect(stderr.trim()).toBe('gem-backup: cancelled: nothing was changed');
    expect(await readFile(join(dataDir, 'backup-records.json'), 'utf8')).toBe(recordsBefore);
    expect((await listed()).find((b) => b.filename === oldest)?.pinned ?? false).toBe(false);
    expect((await readdir(dataDir)).filter((n) => n.startsWith('.tmp-') || n === 'job.lock')).toEqual([]);
  });

  it('refuses a name that is not a backup name, or one not here, and changes nothing', async () => {
    const recordsBefore = await stat(join(dataDir, 'backup-records.json')).then((s) => s.mtimeMs);
    const bad = await cli('pin', '../backup-records.json');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^gem-backup: .*backup name/);
    const missing = await cli('pin', 'gem-backup-2001-01-01-000000.tar.gz');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^gem-backup: .*gem-backup-2001-01-01-000000\.tar\.gz/);
    const usage = await cli('pin');
    expect(usage.code).toBe(1);
    expect(usage.stderr).toMatch(/usage: gem-backup pin NAME/);
    expect(await stat(join(dataDir, 'backup-records.json')).then((s) => s.mtimeMs)).toBe(recordsBefore);
    expect((await listed()).every((b) => !b.pinned)).toBe(true);
  });
});

describe('gem-backup retention resume', () => {
  it('says there is nothing to resume when pruning runs', async () => {
    const res = await cli('retention', 'resume', '--yes');
    expect(res.code).toBe(0);
    expect(res.stdout).toBe('pruning is not paused: nothing to resume');
  });

  it('after damaged records: shows the pause, refuses without --yes, resumes with it', async () => {
    const [oldest, second] = made as [string, string, string];
    await writeFile(join(dataDir, 'backup-records.json'), '{"torn');
    const shown = await cli('retention');
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/Pruning is paused: the backup records were damaged and set aside as /);
    expect(shown.stdout).toContain('nothing is deleted while pruning is paused');
    expect(shown.stdout).toContain(`once resumed, the next backup deletes 2: ${oldest}, ${second}`);
    expect(await readdir(dataDir)).toContain('retention-hold.json');

    const asked = await cli('retention', 'resume');
    expect(asked.code).toBe(1);
    expect(asked.stderr).toContain(`once resumed, the next backup deletes 2: ${oldest}, ${second}`);
    expect(asked.stderr).toMatch(/gem-backup: pruning is still paused: check the pins .* --yes$/m);
    expect(await readdir(dataDir)).toContain('retention-hold.json');

    const resumed = await cli('retention', 'resume', '--yes');
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toBe(`pruning resumed\nthe next backup deletes 2: ${oldest}, ${second}`);
    expect(await readdir(dataDir)).not.toContain('retention-hold.json');
    const after = await cli('retention', '--json');
    expect(JSON.parse(after.stdout).held).toBeNull();
  });

  it('a wrong subcommand is a usage error', async () => {
    const res = await cli('retention', 'resum');
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/usage: gem-backup retention \[--json\] \| gem-backup retention resume/);
  });
});
