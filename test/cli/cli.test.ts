import { randomUUID } from 'node:crypto';
import {
  chmod,
  chown,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnfinishedRecoveryFile } from '../../agent/dr/unfinished';
import { buildKeysExport, createKeyringFile, Keyring } from '../../agent/keys/keyring';
import { userNamed } from '../../agent/system/passwd';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment, startTestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { tempDirForTest } from '../services/temp-dir';
import { until } from '../services/wait';
import { type BuiltCli, buildCli, interruptedWhileSyncing } from './built-cli';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let built: BuiltCli;

const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], { env, cwd: process.cwd() });
/** The CLI with extra environment variables (GEM_KEYS_PASSPHRASE). */
const cliWith = (extra: NodeJS.ProcessEnv, ...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], {
    env: { ...env, ...extra },
    cwd: process.cwd(),
  });

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: () => startPostgres({ fsync: false }), built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('the gem-backup CLI (the package bin)', () => {
  it('the bin starts the same CLI: the same usage; an unknown command, the same line and exit code', async () => {
    const bin = (...args: string[]) =>
      runProcess(process.execPath, ['bin/gem-backup.js', ...args], { env, cwd: process.cwd() });
    const [help, binHelp, binUnknown] = await Promise.all([cli('--help'), bin('--help'), bin('frobnicate')]);
    expect(binHelp.code).toBe(0);
    expect(binHelp.stdout).toMatch(/^usage: gem-backup <command>\n/);
    expect(binHelp.stdout).toBe(help.stdout);
    expect(binUnknown.code).toBe(2);
    expect(binUnknown.stderr).toBe(
      'gem-backup: unknown command "frobnicate"; run "gem-backup help" for the list',
    );
  });

  it('creates a labelled backup, lists it, verifies it, each exiting 0', async () => {
    const created = await cli('create', '--label', 'pre-upgrade');
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    const name = /created (gem-backup-\S+\.tar\.gz)/.exec(created.stdout)?.[1];
    expect(name).toBeDefined();

    const listed = await cli('list');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(name);
    expect(listed.stdout).toContain('"pre-upgrade"');

    const verified = await cli('verify', name!);
    expect(verified.code).toBe(0);
    expect(verified.stdout).toMatch(/ok/);
  });

  it("exports the keys while GEM's database is down, and an agent running on the data dir learns they were downloaded", async () => {
    const own = await seededEnvironment(pg, 'gem-cli-keys-db-down-');
    const t = await startTestAgent(pg, {
      dataDir: own.dataDir,
      databaseUrl: own.env.DATABASE_URL!,
      env: { GEM_SCRIPTS_DIR: own.env.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: own.env.GEM_CONFIG_DIR! },
    });
    try {
      const status = async () =>
        (await (await t.request('/api/v1/keys/status')).json()) as { downloaded: boolean };
      expect(await status()).toMatchObject({ downloaded: false });
      const out = join(own.dataDir, 'saved-keys.json');
      // Nothing listens on port 1: the database is unreachable, as when the controller's database died.
      const res = await runProcess(process.execPath, [built.path, 'keys', 'export', '-o', out], {
        env: { ...own.env, DATABASE_URL: 'postgres://gem:unused@127.0.0.1:1/gem' },
        cwd: process.cwd(),
      });
      expect(res.code, res.stderr).toBe(0);
      expect(res.stdout).toBe(`keys exported to ${out}`);
      const exported = JSON.parse(await readFile(out, 'utf8')) as {
        format: string;
        keyring: { installationId: string };
      };
      expect(exported.format).toBe('gem-encryption-keys');
      expect(exported.keyring.installationId).toBe(t.agent.keyring.installationId);
      // The running agent reads the key state the CLI wrote: the "download your keys" warning ends.
      expect(await status()).toMatchObject({ downloaded: true });
      // Recorded as every command on the box is: what, by whom, how it ended.
      const audit = (await readFile(join(own.dataDir, 'audit.log'), 'utf8'))
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(audit.filter((entry) => entry.via === 'cli')).toEqual([
        expect.objectContaining({ command: 'keys export', outcome: 'ok', user: userInfo().username }),
      ]);
    } finally {
      await t.close();
      await rm(own.dataDir, { recursive: true, force: true });
    }
  });

  it('exports keys to a 0600 file sealed under the passphrase of GEM_KEYS_PASSPHRASE, and imports it back', async () => {
    const out = join(dataDir, 'exported.json');
    const passphrase = { GEM_KEYS_PASSPHRASE: 'long enough passphrase' };
    const res = await cliWith(passphrase, 'keys', 'export', '-o', out);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/passphrase protected/);
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(out, 'utf8'))).toHaveProperty('protected.kdf', 'scrypt');

    const imported = await cliWith(passphrase, 'keys', 'import', out);
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);
    expect(imported.stdout).toMatch(/keys imported/);
    // The installation by its first 8 characters only: the whole id is the DR recovery credential.
    const id = (
      JSON.parse(await readFile(join(dataDir, 'keyring.json'), 'utf8')) as { installationId: string }
    ).installationId;
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(imported.stdout).toContain(id.slice(0, 8));
    expect(imported.stdout).not.toContain(id);
    // Without the passphrase (no terminal to ask on), a protected file is refused.
    const without = await cli('keys', 'import', out);
    expect(without.code).toBe(1);
    expect(without.stderr).toMatch(/protected by a passphrase/);
  });

  it('takes the passphrase from --passphrase-file for export, import and decrypt', async () => {
    const secretFile = join(dataDir, 'passphrase.txt');
    await writeFile(secretFile, 'a passphrase kept in a file\n', { mode: 0o600 });
    const out = join(dataDir, 'exported-file.json');
    const exported = await cli('keys', 'export', '-o', out, '--passphrase-file', secretFile);
    expect(exported.stderr).toBe('');
    expect(exported.code).toBe(0);
    expect(JSON.parse(await readFile(out, 'utf8'))).toHaveProperty('protected.kdf', 'scrypt');
    // The file's passphrase sealed it: the environment's passphrase does not open it.
    const wrong = await cliWith({ GEM_KEYS_PASSPHRASE: 'another passphrase' }, 'keys', 'import', out);
    expect(wrong.code).toBe(1);

    const imported = await cli('keys', 'import', out, '--passphrase-file', secretFile);
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);

    const [backup] = (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'));
    const decrypted = join(dataDir, 'decrypted.tar.gz');
    const res = await cli(
      'decrypt',
      join(dataDir, 'backups', backup!),
      '--keys',
      out,
      '--passphrase-file',
      secretFile,
      '-o',
      decrypted,
    );
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect((await stat(decrypted)).size).toBeGreaterThan(0);

    // A backup saved under another name (a browser's "copy.bin"): its plaintext never replaces it.
    const copy = join(dataDir, 'copy.bin');
    await copyFile(join(dataDir, 'backups', backup!), copy);
    const sealed = await readFile(copy);
    const keysArgs = ['--keys', out, '--passphrase-file', secretFile];
    const inDataDir = await runProcess(process.execPath, [built.path, 'decrypt', 'copy.bin', ...keysArgs], {
      env,
      cwd: dataDir,
    });
    expect(inDataDir.stderr).toBe('');
    expect(inDataDir.stdout.trim()).toBe(`decrypted to ${join(dataDir, 'copy.bin.decrypted.tar.gz')}`);
    const onItself = await cli('decrypt', copy, ...keysArgs, '-o', copy);
    expect(onItself.code).toBe(1);
    expect(onItself.stderr.trim().split('\n')).toEqual([
      expect.stringContaining('is the backup itself: give another -o (nothing was written)'),
    ]);
    expect((await readFile(copy)).equals(sealed)).toBe(true);
  });

  it("keys check tries a keys file on the newest backup and imports nothing; another installation's keys exit 1 with the reason", async () => {
    const away = await tempDirForTest('gem-keys-check-');
    const created = await cli('create');
    expect(created.code, created.stderr).toBe(0);
    const newest = /created (gem-backup-\S+\.tar\.gz)/.exec(created.stdout)?.[1];
    const exported = join(away, 'exported.json');
    expect((await cli('keys', 'export', '-o', exported)).code).toBe(0);
    const keyring = await readFile(join(dataDir, 'keyring.json'));

    const fits = await cli('keys', 'check', exported);
    expect(fits.stderr).toBe('');
    expect(fits.code).toBe(0);
    expect(fits.stdout).toBe(`These keys open ${newest}: every chunk and checksum verified`);

    // Another installation's keyring.json (taken as a keys file): one line naming the key it lacks.
    const otherKeys = join(away, 'keyring.json');
    await Keyring.loadOrCreate(otherKeys);
    const foreign = await cli('keys', 'check', otherKeys);
    expect(foreign.code).toBe(1);
    const lines = foreign.stderr.trim().split('\n');
    expect(lines, foreign.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^gem-backup: These keys cannot open ${newest!.replaceAll('.', '\\.')}: it was made with key \\S+, which the file does not hold \\(the keys file is from installation [0-9a-f]{8}…, this is [0-9a-f]{8}…\\)`,
      ),
    );
    // Nothing was imported either time.
    expect((await readFile(join(dataDir, 'keyring.json'))).equals(keyring)).toBe(true);
  });

  it("decrypts offline with the data dir's own keyring.json copied off the box, as with an export; a damaged one is named", async () => {
    const [backup] = (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'));
    const decrypt = (keys: string, out: string) =>
      cli('decrypt', join(dataDir, 'backups', backup!), '--keys', keys, '-o', out);
    const away = await tempDirForTest('gem-keyring-copy-');
    const copied = join(away, 'keyring.json');
    await copyFile(join(dataDir, 'keyring.json'), copied);
    const exported = join(away, 'exported.json');
    expect((await cli('keys', 'export', '-o', exported)).code).toBe(0);
    const outputs = [];
    for (const keys of [copied, exported]) {
      const out = join(away, `${keys === copied ? 'with-keyring' : 'with-export'}.tar.gz`);
      const res = await decrypt(keys, out);
      expect(res.stderr).toBe('');
      expect(res.code).toBe(0);
      outputs.push(await readFile(out));
    }
    expect(outputs[0]!.length).toBeGreaterThan(1000);
    expect(outputs[0]!.equals(outputs[1]!)).toBe(true);

    const damaged = JSON.parse(await readFile(copied, 'utf8')) as { masterKeys: unknown[] };
    damaged.masterKeys = [];
    await writeFile(copied, JSON.stringify(damaged));
    const refused = await decrypt(copied, join(away, 'x'));
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toMatch(/^gem-backup: this keyring\.json is corrupt: masterKeys: /);
    await expect(stat(join(away, 'x'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('takes a keys file saved with a byte order mark (Notepad, PowerShell) for decrypt and keys check', async () => {
    const created = await cli('create');
    expect(created.code, created.stderr).toBe(0);
    const backup = /created (gem-backup-\S+\.tar\.gz)/.exec(created.stdout)?.[1];
    const away = await tempDirForTest('gem-keys-bom-');
    const exported = join(away, 'exported.json');
    expect((await cli('keys', 'export', '-o', exported)).code).toBe(0);
    const withBom = join(away, 'saved-in-notepad.json');
    await writeFile(withBom, `\uFEFF${await readFile(exported, 'utf8')}`);
    const out = join(away, 'decrypted.tar.gz');
    const decrypted = await cli('decrypt', join(dataDir, 'backups', backup!), '--keys', withBom, '-o', out);
    expect(decrypted.stderr).toBe('');
    expect(decrypted.code).toBe(0);
    expect((await stat(out)).size).toBeGreaterThan(1000);
    const checked = await cli('keys', 'check', withBom);
    expect(checked.stderr).toBe('');
    expect(checked.stdout).toBe(`These keys open ${backup}: every chunk and checksum verified`);
    // A protected one is known as such: without a passphrase, the sources of one are named.
    const passphrase = { GEM_KEYS_PASSPHRASE: 'a passphrase for the bom' };
    const sealed = join(away, 'sealed.json');
    expect((await cliWith(passphrase, 'keys', 'export', '-o', sealed)).code).toBe(0);
    await writeFile(sealed, `\uFEFF${await readFile(sealed, 'utf8')}`);
    const asked = await cli('keys', 'check', sealed);
    expect(asked.code).toBe(1);
    expect(asked.stderr).toMatch(
      /protected by a passphrase and there is no terminal to ask on: set GEM_KEYS_PASSPHRASE/,
    );
    const opened = await cliWith(passphrase, 'keys', 'check', sealed);
    expect(opened.stderr).toBe('');
    expect(opened.code).toBe(0);
  });

  it('never writes over an existing file, into a folder or into a missing folder: keys export -o and decrypt -o', async () => {
    const passphrase = { GEM_KEYS_PASSPHRASE: 'an output passphrase' };
    const keysOut = join(dataDir, 'keys-once.json');
    expect((await cliWith(passphrase, 'keys', 'export', '-o', keysOut)).code).toBe(0);
    const keysBefore = await readFile(keysOut);
    const again = await cliWith(passphrase, 'keys', 'export', '-o', keysOut);
    expect(again.code).toBe(1);
    expect(again.stderr.trim()).toBe(
      `gem-backup: ${keysOut} already exists: choose another -o, or add --force to replace it (nothing was written)`,
    );
    expect((await readFile(keysOut)).equals(keysBefore)).toBe(true);
    expect((await cliWith(passphrase, 'keys', 'export', '-o', keysOut, '--force')).code).toBe(0);
    expect((await readFile(keysOut)).equals(keysBefore)).toBe(false);

    const [backup] = (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'));
    const decrypt = ['decrypt', join(dataDir, 'backups', backup!), '--keys', keysOut];
    const kept = join(dataDir, 'keep-me.tar.gz');
    await writeFile(kept, 'a file the owner keeps');
    const over = await cliWith(passphrase, ...decrypt, '-o', kept);
    expect(over.code).toBe(1);
    expect(over.stderr).toContain(`${kept} already exists: choose another -o, or add --force`);
    expect(await readFile(kept, 'utf8')).toBe('a file the owner keeps');
    const forced = await cliWith(passphrase, ...decrypt, '-o', kept, '--force');
    expect(forced.stderr).toBe('');
    expect(forced.code).toBe(0);
    expect((await stat(kept)).size).toBeGreaterThan(1000);

    const missing = join(dataDir, 'no-such-folder', 'out.tar.gz');
    const intoMissing = await cliWith(passphrase, ...decrypt, '-o', missing);
    expect(intoMissing.code).toBe(1);
    expect(intoMissing.stderr).toContain(`the folder ${dirname(missing)} does not exist`);
    await expect(stat(dirname(missing))).rejects.toMatchObject({ code: 'ENOENT' });
    const intoFolder = await cliWith(passphrase, ...decrypt, '-o', join(dataDir, 'backups'));
    expect(intoFolder.code).toBe(1);
    expect(intoFolder.stderr).toContain('is a folder: give a file name with -o');
  });

  it('without --force never replaces a file made at the -o path while it wrote: keys export -o and decrypt -o', async () => {
    const probe = await runProcess('strace', ['-V']).catch(() => undefined);
    if (probe?.code !== 0)
      throw new Error('strace is missing: apt-get install -y strace (scripts/setup.sh does)');
    const passphrase = { GEM_KEYS_PASSPHRASE: 'an output passphrase' };
    const keys = join(dataDir, 'keys-for-race.json');
    expect((await cliWith(passphrase, 'keys', 'export', '-o', keys)).code).toBe(0);
    const backup = /created (gem-backup-\S+\.tar\.gz)/.exec((await cli('create')).stdout)?.[1];
    expect(backup).toBeDefined();
    for (const args of [
      ['keys', 'export'],
      ['decrypt', join(dataDir, 'backups', backup!), '--keys', keys],
    ]) {
      const folder = await mkdtemp(join(tmpdir(), 'gem-cli-race-'));
      const out = join(folder, 'out');
      // strace holds each fsync 1 s: the command's temp file is there, its name not yet published.
      const running = runProcess(
        'strace',
        [
          ...['-f', '--seccomp-bpf', '-qq', '-o', '/dev/null'],
          ...['-e', 'trace=fsync,fdatasync', '-e', 'inject=fsync,fdatasync:delay_enter=1000000'],
          ...[process.execPath, built.path, ...args, '-o', out],
        ],
        { env: { ...env, ...passphrase }, cwd: process.cwd() },
      );
      await until(async () => (await readdir(folder)).length > 0, 'the temp file', 200);
      await writeFile(out, 'made by someone else meanwhile', { flag: 'wx' });
      const res = await running;
      expect(res.code).toBe(1);
      expect(res.stderr.trim()).toBe(
        `gem-backup: ${out} already exists: choose another -o, or add --force to replace it (nothing was written)`,
      );
      expect(await readFile(out, 'utf8')).toBe('made by someone else meanwhile');
      // Its temp file is gone too.
      expect(await readdir(folder)).toEqual(['out']);
      await rm(folder, { recursive: true });
    }
  });

  /**
   * decrypt of a new backup into a new folder, under interruptedWhileSyncing with `options`, Ctrl-C once
   * its temp file of plaintext is there; how it ended and what the folder holds after.
   */
  async function decryptInterrupted(tag: string, options: { holdMs?: number; twice?: boolean } = {}) {
    const passphrase = { GEM_KEYS_PASSPHRASE: `a ${tag} passphrase` };
    const keys = join(dataDir, `keys-for-${tag}.json`);
    expect((await cliWith(passphrase, 'keys', 'export', '-o', keys)).code).toBe(0);
    const backup = /created (gem-backup-\S+\.tar\.gz)/.exec((await cli('create')).stdout)?.[1];
    expect(backup).toBeDefined();
    const folder = await mkdtemp(join(tmpdir(), `gem-cli-${tag}-`));
    const ended = await interruptedWhileSyncing(
      built,
      ['decrypt', join(dataDir, 'backups', backup!), '--keys', keys, '-o', join(folder, 'out.tar.gz')],
      { ...env, ...passphrase },
      async () => (await readdir(folder)).some((name) => name.startsWith('.tmp-')),
      'the temp file',
      options,
    );
    const left = await readdir(folder);
    await rm(folder, { recursive: true });
    return { ...ended, left };
  }

  it('decrypt stopped by Ctrl-C leaves no plaintext behind: its temp file removed, one line, exit 130', async () => {
    // Each fsync held 1 s: the decrypted temp file is there, not yet published, when Ctrl-C comes.
    const { code, stdout, stderr, left } = await decryptInterrupted('ctrl-c');
    expect(code).toBe(130);
    expect(stdout).toBe('');
    expect(stderr.trim()).toBe('gem-backup: cancelled: nothing was changed');
    expect(left).toEqual([]);
  });

  it('decrypt stopped by a second Ctrl-C while the first waits on its fsync leaves no plaintext behind: exit 130', async () => {
    // Each fsync held 3 s: the first Ctrl-C cannot cut the temp file's fsync short, so the second comes
    // while it is held, and exits at once.
    const { code, stdout, stderr, left } = await decryptInterrupted('ctrl-c-twice', {
      holdMs: 3000,
      twice: true,
    });
    expect(code).toBe(130);
    expect(stdout).toBe('');
    expect(stderr.trim()).toBe('gem-backup: SIGINT again: stopped at once');
    expect(left).toEqual([]);
  });

  it('keys import stopped by Ctrl-C half-way is finished, not left half done, and says so: exit 130', async () => {
    // A box of its own: the import gives it another installation's identity.
    const own = await seededEnvironment(pg, 'gem-cli-import-ctrl-c-');
    const other = createKeyringFile();
    const keys = join(own.dataDir, 'other-installation.json');
    await writeFile(keys, await buildKeysExport(other), { mode: 0o600 });
    // Each fsync held 1 s: the import has recorded the identity change (its temp file is being synced)
    // and not yet replaced the keyring when Ctrl-C comes.
    const { code, stdout, stderr } = await interruptedWhileSyncing(
      built,
      ['keys', 'import', keys],
      own.env,
      async () => (await readdir(own.dataDir)).some((n) => n.startsWith('.tmp-last-restore.json')),
      'the record of the identity change',
    );
    expect(code).toBe(130);
    expect(stdout).toMatch(`keys imported: installation ${other.installationId.slice(0, 8)}…`);
    expect(stderr.trim()).toBe('gem-backup: interrupted too late to cancel: the keys import had completed');
    // Both halves are there: the other installation's keys, and the hold of pushes that goes with them.
    const keyring = JSON.parse(await readFile(join(own.dataDir, 'keyring.json'), 'utf8'));
    expect(keyring.installationId).toBe(other.installationId);
    const lastRestore = JSON.parse(await readFile(join(own.dataDir, 'last-restore.json'), 'utf8'));
    expect(lastRestore.identityChangedAt).toEqual(expect.any(String));
    expect((await readdir(own.dataDir)).filter((n) => n.startsWith('.tmp-') || n === 'job.lock')).toEqual([]);
    await rm(own.dataDir, { recursive: true, force: true });
  });

  it('dr recover --abandon stopped by Ctrl-C half-way is finished, not left half done, and says so: exit 130', async () => {
    const own = await seededEnvironment(pg, 'gem-cli-abandon-ctrl-c-');
    // Read now: a Keyring follows its file, which the import replaces.
    const ownKeyring = await Keyring.load(join(own.dataDir, 'keyring.json'));
    const [ownId, ownKeyId] = [ownKeyring.installationId, ownKeyring.activeKey.id];
    const recovered = createKeyringFile();
    const keys = join(own.dataDir, 'recovered.json');
    await writeFile(keys, await buildKeysExport(recovered), { mode: 0o600 });
    // As a recovery that stopped after installing the recovered keys leaves the box.
    const imported = await runProcess(process.execPath, [built.path, 'keys', 'import', keys], {
      env: own.env,
    });
    expect(imported.code, imported.stderr).toBe(0);
    await new UnfinishedRecoveryFile(join(own.dataDir, 'dr-recovery.json')).write({
      installationId: recovered.installationId,
      startedAt: new Date().toISOString(),
      previousInstallationId: ownId,
      previousActiveKeyId: ownKeyId,
    });
    // Each fsync held 1 s: Ctrl-C comes while the box's own keyring is being put back.
    const { code, stdout, stderr } = await interruptedWhileSyncing(
      built,
      ['dr', 'recover', '--abandon'],
      own.env,
      async () => (await readdir(own.dataDir)).some((n) => n.startsWith('.tmp-keyring.json')),
      'the keyring being put back',
    );
    expect(code).toBe(130);
    expect(stdout).toMatch(/^the unfinished recovery was given up: /);
    expect(stderr.trim()).toBe(
      'gem-backup: interrupted too late to cancel: the giving up of the recovery had completed',
    );
    // The box's own identity back, and no record left to hold its pushes.
    expect((await Keyring.load(join(own.dataDir, 'keyring.json'))).installationId).toBe(ownId);
    expect(
      (await readdir(own.dataDir)).filter((n) => /^\.tmp-|^job\.lock$|^dr-recovery\.json$/.test(n)),
    ).toEqual([]);
    await rm(own.dataDir, { recursive: true, force: true });
  });

  it('records each command that opens the agent in the audit log: what, by whom, how it ended', async () => {
    expect((await cli('create')).code).toBe(0);
    const missing = 'gem-backup-2000-01-01-000000.tar.gz';
    expect((await cli('verify', missing)).code).toBe(1);
    const lines = (await readFile(join(dataDir, 'audit.log'), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.via === 'cli');
    expect(lines.slice(-2)).toEqual([
      expect.objectContaining({
        command: 'create',
        outcome: 'ok',
        user: userInfo().username,
        pid: expect.any(Number),
      }),
      expect.objectContaining({ command: `verify ${missing}`, outcome: 'error', error: 'not_found' }),
    ]);
  });

  it('refuses a passphrase on the command line, naming the alternatives', async () => {
    const out = join(dataDir, 'never.json');
    const cases = [
      ['keys', 'export', '-o', out, '--passphrase', 'x'],
      ['keys', 'export', '-o', out, '--passphrase=x'],
      ['keys', 'import', join(dataDir, 'exported.json'), '--passphrase', 'x'],
      ['decrypt', 'some.tar.gz', '--keys', join(dataDir, 'exported.json'), '--passphrase', 'x'],
    ];
    // Refused while reading the arguments, before the agent opens: the four run at once.
    const results = await Promise.all(cases.map((args) => cli(...args)));
    for (const [i, args] of cases.entries()) {
      const res = results[i]!;
      expect(res.code, args.join(' ')).not.toBe(0);
      const lines = res.stderr.trim().split('\n');
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0]).toMatch(/^gem-backup: --passphrase is not accepted/);
      expect(lines[0]).toContain('GEM_KEYS_PASSPHRASE');
      expect(lines[0]).toContain('--passphrase-file');
      expect(lines[0]).toMatch(/prompt/);
    }
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
    const help = await cli('--help');
    expect(help.stdout).not.toMatch(/--passphrase P/);
    expect(help.stdout).toContain('--passphrase-file');
  });

  it('fails with exit 1 and exactly one clear line on stderr', async () => {
    const before = await readdir(join(dataDir, 'backups'));
    for (const args of [
      ['verify', '../../etc/passwd'],
      ['verify', 'gem-backup-2001-01-01-000000.tar.gz'],
      ['decrypt', 'nothing.tar.gz'],
      ['keys', 'import', join(dataDir, 'config', 'gem.json')],
    ]) {
      const res = await cli(...args);
      expect(res.code, args.join(' ')).toBe(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0]).toMatch(/^gem-backup: \S/);
    }
    expect(await readdir(join(dataDir, 'backups'))).toEqual(before);
  });

  it('verifies a file given by path itself, not the catalog backup of the same name', async () => {
    const [backup] = (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'));
    const usb = await mkdtemp(join(tmpdir(), 'gem-usb-'));
    try {
      const intact = join(usb, 'intact', backup!);
      const damaged = join(usb, 'damaged', backup!);
      await mkdir(dirname(intact));
      await mkdir(dirname(damaged));
      await copyFile(join(dataDir, 'backups', backup!), intact);
      const bytes = await readFile(intact);
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      await writeFile(damaged, bytes);
      const recordsBefore = await readdir(join(dataDir, 'backups'));

      const bad = await cli('verify', damaged);
      expect(bad.code).toBe(1);
      const lines = bad.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^gem-backup: .*damaged/);

      const good = await cli('verify', intact);
      expect(good.stderr).toBe('');
      expect(good.code).toBe(0);
      expect(good.stdout).toMatch(new RegExp(`^${backup!.replaceAll('.', '\\.')}: ok \\(\\d+ members`));
      // A file outside the catalog leaves no record in it.
      expect(await readdir(join(dataDir, 'backups'))).toEqual(recordsBefore);

      const missing = await cli('verify', join(usb, 'nothing.tar.gz'));
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/^gem-backup: no such file/);
    } finally {
      await rm(usb, { recursive: true, force: true });
    }
  });

  it('a restore of a damaged file fails with exactly one line on stderr (no job log)', async () => {
    const [backup] = (await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'));
    const usb = await mkdtemp(join(tmpdir(), 'gem-usb-'));
    try {
      const damaged = join(usb, backup!);
      const bytes = await readFile(join(dataDir, 'backups', backup!));
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      await writeFile(damaged, bytes);
      const res = await cli('restore', damaged, '--yes');
      expect(res.code).toBe(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines, res.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^gem-backup: .*damaged/);
    } finally {
      await rm(usb, { recursive: true, force: true });
    }
  });

  it('applies the API rules: a backup label, a keys export passphrase; its usage lists dr status', async () => {
    const backups = () => readdir(join(dataDir, 'backups')).catch(() => []);
    const before = await backups();
    const labels = ['a/b', 'x'.repeat(65), '   ', 'semi;colon'];
    // Refused before the agent opens: the four run at once.
    const results = await Promise.all(labels.map((label) => cli('create', '--label', label)));
    for (const [i, label] of labels.entries()) {
      const res = results[i]!;
      expect(res.code, label).toBe(1);
      const lines = res.stderr.trim().split('\n');
      expect(lines, label).toHaveLength(1);
      expect(lines[0]).toMatch(/^gem-backup: label: /);
    }
    expect(await backups()).toEqual(before);

    const out = join(dataDir, 'short.json');
    const short = await cliWith({ GEM_KEYS_PASSPHRASE: 'short' }, 'keys', 'export', '-o', out);
    expect(short.code).toBe(1);
    expect(short.stderr.trim()).toBe('gem-backup: passphrase: use at least 8 characters');
    await expect(stat(out)).rejects.toThrow(/ENOENT/);

    const help = await cli('--help');
    expect(help.stdout).toMatch(/^ {2}dr status /m);
  });

  it('refuses an unknown command, no command, an unknown option and a missing -o folder: one line, non-zero', async () => {
    const missing = join(dataDir, 'no-such-folder', 'keys.json');
    const cases: Array<[string[], number, RegExp]> = [
      [['frobnicate'], 2, /^gem-backup: unknown command "frobnicate"; run "gem-backup help" for the list$/],
      [[], 2, /^gem-backup: no command given; run "gem-backup help" for the list$/],
      [['list', '--jsn'], 1, /^gem-backup: Unknown option '--jsn'/],
      [['keys', 'export', '-o', missing], 1, /^gem-backup: the folder .*no-such-folder does not exist/],
    ];
    for (const [args, code, line] of cases) {
      const res = await cli(...args);
      expect(res.code, args.join(' ')).toBe(code);
      const lines = res.stderr.trim().split('\n');
      expect(lines, res.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(line);
    }
    await expect(stat(join(dataDir, 'no-such-folder'))).rejects.toThrow(/ENOENT/);

    // A database that does not answer is named as the database, never with its password.
    const down = await cliWith({ DATABASE_URL: 'postgres://gem:s3cret-pw@127.0.0.1:9/gem' }, 'list');
    expect(down.code).toBe(1);
    const lines = down.stderr.trim().split('\n');
    expect(lines, down.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^gem-backup: cannot reach the database at 127\.0\.0\.1:9 \(ECONNREFUSED\)/);
    expect(down.stderr).not.toContain('s3cret-pw');
  });
  it('refuses an argument a command does not take, with its usage, and does nothing', async () => {
    const name = 'gem-backup-2001-01-02-000000.tar.gz';
    const keysFile = join(dataDir, 'keyring.json');
    const keyring = await readFile(keysFile);
    const work = await mkdtemp(join(tmpdir(), 'gem-cli-extra-'));
    try {
      const cases: string[][] = [
        // Each would have done the first part and said so, leaving the rest undone without a word.
        ['verify', name, 'gem-backup-2001-01-01-000000.tar.gz'],
        ['decrypt', join(work, name), 'out.tar.gz', '--keys', keysFile],
        ['restore', name, 'gem-backup-2001-01-01-000000.tar.gz', '--yes'],
        ['keys', 'export', join(work, 'keys.json')],
        ['keys', 'import', keysFile, join(work, 'other.json')],
        ['keys', 'check', keysFile, join(work, 'other.json')],
      ];
      for (const args of cases) {
        // In an empty folder: an export or a decrypt to its default name would land there.
        const res = await runProcess(process.execPath, [built.path, ...args], { env, cwd: work });
        expect(res.code, args.join(' ')).toBe(1);
        const lines = res.stderr.trim().split('\n');
        expect(lines, res.stderr).toHaveLength(1);
        expect(lines[0], args.join(' ')).toMatch(/^gem-backup: usage: gem-backup /);
        expect(res.stdout, args.join(' ')).toBe('');
        expect(await readdir(work), args.join(' ')).toEqual([]);
      }
      expect(await readFile(keysFile)).toEqual(keyring);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  it("refuses a command run by another user than the installation's, naming the command line that works, and changes nothing", async () => {
    if (process.getuid?.() !== 0)
      throw new Error('this test gives files to user nobody: run the suite as root (as CI does)');
    const nobody = userNamed('nobody');
    if (!nobody) throw new Error('this test needs the system user nobody');
    const other = await seededEnvironment(pg, 'gem-cli-owner-');
    const keyring = join(other.dataDir, 'keyring.json');
    const as = (user: string, ...args: string[]) =>
      runProcess('runuser', ['-u', user, '--', process.execPath, built.path, ...args], {
        env: other.env,
        cwd: '/',
      });
    try {
      // Root on an installation that belongs to the service's user: a backup written now would be root's.
      await chown(keyring, nobody.uid, nobody.gid);
      const before = await readdir(other.dataDir);
      const installationId = randomUUID();
      for (const [args, repeated] of [
        [['create', '--label', 'by root'], "create --label 'by root'"],
        [['keys', 'export'], 'keys export'],
        [['keys', 'import', keyring], `keys import ${keyring}`],
        // The DR recovery credential is never repeated whole: the command says where it goes.
        [['dr', 'recover', '--installation-id', installationId], 'dr recover --installation-id ID'],
        [['dr', 'recover', `--installation-id=${installationId}`], 'dr recover --installation-id=ID'],
      ] as const) {
        const res = await runProcess(process.execPath, [built.path, ...args], { env: other.env, cwd: '/' });
        expect(res.code, res.stderr).toBe(1);
        const lines = res.stderr.trim().split('\n');
        expect(lines, res.stderr).toHaveLength(1);
        expect(lines[0]).toBe(
          `gem-backup: the installation in ${other.dataDir} belongs to user nobody and this command runs as root: ` +
            'run it as user nobody, so that what it writes stays readable to the service: ' +
            `runuser -u nobody -- gem-backup ${repeated}`,
        );
      }
      // Nothing written: no backup, no audit line, no state, and the keyring still the service user's.
      expect(await readdir(other.dataDir)).toEqual(before);
      expect((await stat(keyring)).uid).toBe(nobody.uid);
      // An owner /etc/passwd does not name: runuser takes no uid, sudo takes `#<uid>`.
      await chown(keyring, 4242, 4242);
      const unnamed = await runProcess(process.execPath, [built.path, 'list'], { env: other.env, cwd: '/' });
      expect(unnamed.code).toBe(1);
      expect(unnamed.stderr.trim()).toBe(
        `gem-backup: the installation in ${other.dataDir} belongs to user #4242 and this command runs as root: ` +
          "run it as user #4242, so that what it writes stays readable to the service: sudo -E -u '#4242' gem-backup list",
      );
      await chown(keyring, nobody.uid, nobody.gid);

      // The service's user itself runs it; the CLI bundle and the data dir must be reachable to it.
      await chmod(dirname(built.path), 0o755);
      await runProcess('chown', ['-R', `${nobody.uid}:${nobody.gid}`, other.dataDir]);
      const own = await as('nobody', 'list', '--json');
      expect(own.stderr).toBe('');
      expect(own.code).toBe(0);
      expect(JSON.parse(own.stdout)).toEqual([]);

      // Another user on root's installation: told to use root, not "no installation".
      await runProcess('chown', ['-R', '0:0', other.dataDir]);
      const denied = await as('nobody', 'list');
      expect(denied.code).toBe(1);
      expect(denied.stderr.trim()).toBe(
        `gem-backup: the installation in ${other.dataDir} belongs to root and this command runs as user nobody: run it as root: sudo -E gem-backup list`,
      );
    } finally {
      await rm(other.dataDir, { recursive: true, force: true });
    }
  });
});
