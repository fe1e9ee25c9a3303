/**
 * The CLI as an operator meets it over SSH: a forgotten GEM_DATA_DIR, `| head`, Ctrl-C, a failed
 * auto-upload, a terminal's progress line, and the messages that say what to do.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeysExport, createKeyringFile } from '../../agent/keys/keyring';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { until, within } from '../services/wait';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let scratch: string;
let built: BuiltCli;
/** The CLI built from the current sources (./built-cli.ts), as the operator's `gem-backup`. */
let BIN: string;

const cliIn = (extra: NodeJS.ProcessEnv, ...args: string[]) =>
  runProcess(process.execPath, [BIN, ...args], { env: { ...env, ...extra }, cwd: scratch });
const cli = (...args: string[]) => cliIn({}, ...args);
const oneLine = (stderr: string) => {
  const lines = stderr.trim().split('\n');
  expect(lines, stderr).toHaveLength(1);
  return lines[0]!;
};
const backups = async (dir = dataDir) =>
  (await readdir(join(dir, 'backups')).catch(() => [] as string[])).filter((n) => n.endsWith('.tar.gz'));

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: startPostgres, built: buildCli }));
  BIN = built.path;
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-op-'));
  scratch = await mkdtemp(join(tmpdir(), 'gem-cli-op-scratch-'));
  const created = await cli('create');
  expect(created.code, created.stderr).toBe(0);
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (scratch) await rm(scratch, { recursive: true, force: true });
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('a data dir without an installation', () => {
  it('is refused with one line by every command that acts on an installation; nothing is created', async () => {
    const empty = join(scratch, 'forgot-the-export');
    const url = await pg.createDatabase();
    for (const args of [
      ['list'],
      ['create'],
      ['verify', 'gem-backup-2026-01-01-000000.tar.gz'],
      ['restore', 'gem-backup-2026-01-01-000000.tar.gz', '--yes'],
      ['keys', 'export', '-o', join(scratch, 'k.json')],
      ['dr', 'status'],
      ['dr', 'push'],
    ]) {
      const res = await cliIn({ GEM_DATA_DIR: empty, DATABASE_URL: url }, ...args);
      expect(res.code, args.join(' ')).toBe(1);
      expect(oneLine(res.stderr)).toBe(
        `gem-backup: no GEM backup installation in ${empty}: set GEM_DATA_DIR to the service's data dir (systemctl cat gem-backup shows it), or start the service once to create one`,
      );
      expect(existsSync(empty), args.join(' ')).toBe(false);
    }
    // Nothing reached the database either: no agent schema was made in it.
    const schemas = await withSql(
      url,
      (sql) => sql`select schema_name from information_schema.schemata where schema_name = 'gem_backup'`,
    );
    expect(schemas).toHaveLength(0);
  });

  it('keys import, which sets up a new box, still makes one', async () => {
    const fresh = join(scratch, 'new-box');
    const exported = join(scratch, 'other.json');
    const other = createKeyringFile();
    await writeFile(exported, await buildKeysExport(other), { mode: 0o600 });
    const res = await cliIn(
      { GEM_DATA_DIR: fresh, DATABASE_URL: await pg.createDatabase() },
      'keys',
      'import',
      exported,
    );
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toContain(`installation ${other.installationId.slice(0, 8)}…`);
    expect(res.stdout).not.toContain(other.installationId);
    expect(existsSync(join(fresh, 'keyring.json'))).toBe(true);
  });
});

describe('output and signals', () => {
  it('`list | true` (a reader that stops early) exits 0 without a stack trace', async () => {
    const res = await runProcess(
      'bash',
      ['-c', `"${process.execPath}" "${BIN}" list | true; echo "exit=\${PIPESTATUS[0]}" >&2`],
      { env, cwd: scratch },
    );
    expect(res.stderr.trim()).toBe('exit=0');
  });

  /** True once the CLI's job is running: it holds the job lock and is listed, not ended, in jobs.json. */
  async function jobRunning(): Promise<boolean> {
    if (!existsSync(join(dataDir, 'job.lock'))) return false;
    const text = await readFile(join(dataDir, 'jobs.json'), 'utf8').catch(() => '');
    if (!text) return false;
    const file = JSON.parse(text) as { jobs: Array<{ job: { endedAt?: string } }> };
    return file.jobs.some((entry) => !entry.job.endedAt);
  }

  /**
   * Runs the CLI and sends SIGINT as soon as its job runs (the lock alone is taken a moment before the
   * job exists: a signal then finds no job to cancel); its exit and output.
   */
  async function interruptedRun(...args: string[]) {
    const child = spawn(process.execPath, [BIN, ...args], {
      env,
      cwd: scratch,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('close', (code, signal) => resolve({ code, signal })),
    );
    const deadline = Date.now() + 30_000;
    // Its job runs, and has made the command's work folder (which the command must remove again).
    const started = async () => (await jobRunning()) && (await workFoldersOf(child.pid!)).length > 0;
    while (!(await started()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(await started()).toBe(true);
    child.kill('SIGINT');
    // A CLI that never exits after Ctrl-C fails here with what it said, instead of the whole test
    // timing out and leaving the job lock to the next test.
    const ended = await within(exited, 60_000, 'the CLI to exit after SIGINT').catch(async (error: Error) => {
      child.kill('SIGKILL');
      const jobs = await readFile(join(dataDir, 'jobs.json'), 'utf8').catch(() => '');
      throw new Error(`${error.message}\nstderr: ${stderr}\njobs.json: ${jobs}`);
    });
    return { ...ended, stdout, stderr, pid: child.pid! };
  }

  /** The work folders (`work/p<pid>…`) the CLI process `pid` left in the data dir. */
  async function workFoldersOf(pid: number): Promise<string[]> {
    const names = await readdir(join(dataDir, 'work')).catch(() => []);
    return names.filter((name) => name === `p${pid}` || name.startsWith(`p${pid}n`));
  }

  /** The phase the history file records for the newest job of `kind`. */
  async function recordedPhase(kind: string): Promise<string | undefined> {
    const file = JSON.parse(await readFile(join(dataDir, 'jobs.json'), 'utf8')) as {
      jobs: Array<{ job: { kind: string; phase: string; startedAt: string } }>;
    };
    return file.jobs
      .filter((entry) => entry.job.kind === kind)
      .sort((a, b) => a.job.startedAt.localeCompare(b.job.startedAt))
      .at(-1)?.job.phase;
  }

  it('Ctrl-C during create or restore cancels the job, closes the agent, says so in one line, exit 130', async () => {
    // Enough data that the job is still running when the signal comes.
    await withSql(env.DATABASE_URL!, async (sql) => {
      await sql`create table public.bulk as select g as id, repeat(md5(g::text), 8) as payload from generate_series(1, 400000) g`;
    });
    const before = await backups();
    const created = await interruptedRun('create');
    expect(created).toMatchObject({ code: 130, signal: null, stdout: '' });
    expect(oneLine(created.stderr)).toBe('gem-backup: cancelled: nothing was changed');
    expect(await backups()).toEqual(before);
    // The job was cancelled through its own path: no lock and no temp file left behind.
    expect(existsSync(join(dataDir, 'job.lock'))).toBe(false);
    expect((await readdir(join(dataDir, 'backups'))).filter((n) => n.startsWith('.tmp'))).toEqual([]);
    // Nor its own work folder, which made the backup's scratch space; and the job's record says the
    // step it stopped in, not `cancelling`.
    expect(await workFoldersOf(created.pid)).toEqual([]);
    expect(await recordedPhase('backup')).toMatch(/^(starting|dump|folders|pack|verify)$/);

    // The backup restored would drop the table: it is still there, the restore said it changed nothing.
    const restored = await interruptedRun('restore', before[0]!, '--yes');
    expect(restored).toMatchObject({ code: 130, signal: null, stdout: '' });
    expect(await workFoldersOf(restored.pid)).toEqual([]);
    expect(oneLine(restored.stderr)).toBe(
      'gem-backup: cancelled: the restore stopped before the switch-over; the current data was not changed',
    );
    expect(existsSync(join(dataDir, 'job.lock'))).toBe(false);
    await withSql(env.DATABASE_URL!, async (sql) => {
      expect(await sql`select count(*)::int as n from public.bulk`).toEqual([{ n: 400000 }]);
      await sql`drop table public.bulk`;
    });
  });

  /**
   * Runs `words` on a terminal (`script` gives it one) and takes the terminal away once its job runs, as
   * when an SSH connection drops: the kernel sends SIGHUP, and every later write to it fails (EIO).
   * Resolves when the command's process has ended, with its newest job of `kind` as jobs.json records it.
   */
  async function runOnLostTerminal(kind: string, words: string[]) {
    const terminal = spawn('script', ['-qec', words.map((w) => `'${w}'`).join(' '), '/dev/null'], {
      env,
      cwd: scratch,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    const deadline = Date.now() + 30_000;
    let pid: number | undefined;
    while (pid === undefined && Date.now() < deadline) {
      const folder = (await readdir(join(dataDir, 'work')).catch(() => [])).find((n) => /^p\d+/.test(n));
      if (folder && (await jobRunning())) pid = Number(/^p(\d+)/.exec(folder)![1]);
      else await new Promise((r) => setTimeout(r, 5));
    }
    expect(pid).toBeDefined();
    terminal.kill('SIGKILL');
    const alive = () => {
      try {
        process.kill(pid!, 0);
        return true;
      } catch {
        return false;
      }
    };
    const ends = Date.now() + 120_000;
    while (alive() && Date.now() < ends) await new Promise((r) => setTimeout(r, 50));
    expect(alive()).toBe(false);
    const history = JSON.parse(await readFile(join(dataDir, 'jobs.json'), 'utf8')) as {
      jobs: Array<{ job: { kind: string; state: string; startedAt: string; endedAt?: string } }>;
    };
    const job = history.jobs
      .map((entry) => entry.job)
      .filter((one) => one.kind === kind)
      .sort((a, b) => a.startedAt.localeCompare(b.startedAt))
      .at(-1);
    return { pid: pid!, job };
  }

  it('a hangup (the SSH session lost) during a restore stops it as cleanly as Ctrl-C: cancelled, nothing left behind', async () => {
    await withSql(env.DATABASE_URL!, async (sql) => {
      await sql`create table public.bulk as select g as id, repeat(md5(g::text), 8) as payload from generate_series(1, 400000) g`;
    });
    const made = await cli('create');
    expect(made.code, made.stderr).toBe(0);
    const newest = (await backups()).at(-1)!;
    await withSql(env.DATABASE_URL!, (sql) => sql`insert into public.bulk values (0, 'after the backup')`);
    const restore = [process.execPath, BIN, 'restore', newest, '--yes'];
    const hungUp = await runOnLostTerminal('restore', restore);
    // Its job ended as cancelled (a crash would leave it running, for the next start to call interrupted).
    expect(hungUp.job).toMatchObject({ state: 'cancelled', endedAt: expect.any(String) });
    expect(await workFoldersOf(hungUp.pid)).toEqual([]);
    expect(existsSync(join(dataDir, 'job.lock'))).toBe(false);
    // Nothing a crash would leave for the next start: no staging database or folder, no journal.
    expect(existsSync(join(dataDir, 'restore-journal.json'))).toBe(false);
    await withSql(env.DATABASE_URL!, async (sql) => {
      expect(await sql`select count(*)::int as n from public.bulk`).toEqual([{ n: 400001 }]);
      const staging = await sql`select datname from pg_database where datname like '%gem_restore%'`;
      expect(staging).toEqual([]);
      await sql`drop table public.bulk`;
    });
  });

  it('create warns on stderr, with the reason, about an auto-upload that failed; exit 0', async () => {
    const t = await startTestAgent(pg, { dataDir, databaseUrl: env.DATABASE_URL! });
    try {
      // A failure the upload gives up on at once (a key in PuTTY format: permanent, not retried). An
      // unreachable server fails the same way but only after the product's retry backoff (~5 s here), and
      // the CLI has no setting to shorten it; test/offsite covers the retries themselves.
      await t.agent.settings.update({
        offsite: {
          sftp: {
            enabled: true,
            host: '127.0.0.1',
            port: 18651, // nothing listens here: never reached
            username: 'gem',
            remotePath: 'backups',
            auth: { privateKey: 'PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n' },
            autoUpload: true,
          },
        },
      });
    } finally {
      await t.close();
    }
    const res = await cli('create');
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^created gem-backup-\S+\.tar\.gz/);
    expect(oneLine(res.stderr)).toMatch(
      /^warning: the upload to SFTP server failed: The private key is in PuTTY format \(\.ppk\); \S/,
    );
  });

  it('on a terminal the progress line uses the page words, no "0.0 MiB", and is cleared before the result', async () => {
    // `script` gives the CLI a terminal; it inherits the environment.
    const command = [process.execPath, BIN, 'verify', (await backups())[0]!];
    const res = await runProcess('script', ['-qec', command.map((w) => `'${w}'`).join(' '), '/dev/null'], {
      env,
      cwd: scratch,
    });
    expect(res.code, res.stdout).toBe(0);
    expect(res.stdout).toContain(
      'Checking the backup: every file is decrypted and compared with its checksum',
    );
    expect(res.stdout).not.toContain('0.0 MiB');
    expect(res.stdout).toMatch(/\r\x1b\[Kgem-backup-\S+\.tar\.gz: ok/);
  });
});

describe('messages that say what to do', () => {
  /** The keys exported, protected by a passphrase, to `name` in the scratch folder; returns its path. */
  async function exportProtected(name: string): Promise<string> {
    const out = join(scratch, name);
    const exported = await cliIn(
      { GEM_KEYS_PASSPHRASE: 'long enough passphrase' },
      'keys',
      'export',
      '-o',
      out,
    );
    expect(exported.code, exported.stderr).toBe(0);
    return out;
  }

  it('a protected keys file without a terminal names GEM_KEYS_PASSPHRASE and --passphrase-file', async () => {
    const out = await exportProtected('protected.json');
    for (const args of [
      ['keys', 'import', out],
      [
        'decrypt',
        join(dataDir, 'backups', (await backups())[0]!),
        '--keys',
        out,
        '-o',
        join(scratch, 'x.tar.gz'),
      ],
    ]) {
      const res = await cli(...args);
      expect(res.code).toBe(1);
      const line = oneLine(res.stderr);
      expect(line).toMatch(/^gem-backup: this keys file is protected by a passphrase/);
      expect(line).toContain('GEM_KEYS_PASSPHRASE');
      expect(line).toContain('--passphrase-file');
    }
  });

  it('Ctrl-C at the passphrase prompt: one line, exit 130, nothing imported', async () => {
    const out = await exportProtected('protected-for-prompt.json');
    const keyringBefore = await readFile(join(dataDir, 'keyring.json'), 'utf8');
    // `script` gives the CLI a terminal; -e makes its exit status the CLI's.
    const command = [process.execPath, BIN, 'keys', 'import', out];
    const terminal = spawn('script', ['-qec', command.map((w) => `'${w}'`).join(' '), '/dev/null'], {
      env,
      cwd: scratch,
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    let seen = '';
    terminal.stdout.on('data', (d: Buffer) => (seen += d));
    const exited = new Promise<number | null>((done) => terminal.once('close', (code) => done(code)));
    await until(async () => seen.includes('Passphrase of the keys file: '), 'the passphrase prompt', 150);
    terminal.stdin.write('\u0003');
    expect(await within(exited, 15_000, 'the CLI to end')).toBe(130);
    expect(seen).toContain('gem-backup: cancelled: nothing was changed');
    expect(await readFile(join(dataDir, 'keyring.json'), 'utf8')).toBe(keyringBefore);
  });

  it('a missing keys file, verify without a file, not a backup, and <command> --help', async () => {
    const missing = join(scratch, 'nope.json');
    const [backup] = await backups();
    expect(oneLine((await cli('keys', 'import', missing)).stderr)).toBe(
      `gem-backup: no such keys file: ${missing}`,
    );
    expect(oneLine((await cli('decrypt', join(dataDir, 'backups', backup!), '--keys', missing)).stderr)).toBe(
      `gem-backup: no such keys file: ${missing}`,
    );
    const verify = await cli('verify');
    expect(verify.code).toBe(1);
    expect(oneLine(verify.stderr)).toMatch(/^gem-backup: usage: gem-backup verify FILE/);

    const notBackup = join(scratch, 'notabackup.tar.gz');
    await writeFile(notBackup, 'hello, this is not a backup at all\n'.repeat(100));
    const line = oneLine((await cli('verify', notBackup)).stderr);
    expect(line).toMatch(/^gem-backup: not a GEM backup file: /);
    expect(line.match(/GEM backup file/g)).toHaveLength(1);
    // A GEM backup from a newer agent (format version 3): not "not a GEM backup file", and what to do.
    const newer = join(scratch, 'newer.tar.gz');
    const made = await readFile(join(dataDir, 'backups', backup!));
    await writeFile(newer, Buffer.concat([Buffer.from('GEMBKP\x00\x03', 'latin1'), made.subarray(8)]));
    expect(oneLine((await cli('verify', newer)).stderr)).toBe(
      'gem-backup: backup format version 3 is newer than this GEM Backup reads (1 and 2): upgrade GEM Backup to read it',
    );

    for (const name of ['create', 'list', 'verify', 'restore', 'decrypt', 'keys', 'dr']) {
      const help = await cli(name, '--help');
      expect(help.code, name).toBe(0);
      expect(help.stderr, name).toBe('');
      expect(help.stdout, name).toMatch(new RegExp(`^usage: gem-backup ${name}\\b`));
    }
  });

  it("decrypt with another installation's keys file names the installation the backup needs", async () => {
    const other = createKeyringFile();
    const keys = join(scratch, 'other-installation.json');
    await writeFile(keys, await buildKeysExport(other), { mode: 0o600 });
    const mine = JSON.parse(await readFile(join(dataDir, 'keyring.json'), 'utf8')) as {
      installationId: string;
    };
    const out = join(scratch, 'never.tar.gz');
    const res = await cli(
      'decrypt',
      join(dataDir, 'backups', (await backups())[0]!),
      '--keys',
      keys,
      '-o',
      out,
    );
    expect(res.code).toBe(1);
    const line = oneLine(res.stderr);
    expect(line).toContain(`${keys} does not hold key`);
    // Each installation by its 8-character prefix: the whole id is the DR recovery credential.
    expect(line).toContain(`(the keys file is installation ${other.installationId.slice(0, 8)}…'s)`);
    expect(line).toContain(`use the keys file of installation ${mine.installationId.slice(0, 8)}…`);
    expect(line).not.toContain(mine.installationId);
    expect(line).not.toContain(other.installationId);
    expect(line).not.toMatch(/import/);
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
  });

  it('keys export with no passphrase and no terminal writes the file and warns that it is not protected', async () => {
    const out = join(scratch, 'plain.json');
    const res = await cli('keys', 'export', '-o', out);
    expect(res.code).toBe(0);
    expect(res.stdout.trim()).toBe(`keys exported to ${out}`);
    expect(oneLine(res.stderr)).toMatch(/^warning: .*plain\.json is NOT passphrase protected/);
    expect((await stat(out)).mode & 0o777).toBe(0o600);
  });
});
