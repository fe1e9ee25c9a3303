import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProcess } from '../../agent/system/spawn';
import { seededEnvironment } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;

const cli = (...args: string[]) =>
  runProcess(process.execPath, ['bin/gem-backup.js', ...args], { env, cwd: process.cwd() });
/** The CLI with extra environment variables (GEM_KEYS_PASSPHRASE). */
const cliWith = (extra: NodeJS.ProcessEnv, ...args: string[]) =>
  runProcess(process.execPath, ['bin/gem-backup.js', ...args], {
    env: { ...env, ...extra },
    cwd: process.cwd(),
  });

beforeAll(async () => {
  pg = await startPostgres();
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-'));
});
afterAll(async () => {
  await pg?.stop();
});

describe('the gem-backup CLI (the package bin)', () => {
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
  });

  it('refuses a passphrase on the command line, naming the alternatives', async () => {
    const out = join(dataDir, 'never.json');
    for (const args of [
      ['keys', 'export', '-o', out, '--passphrase', 'x'],
      ['keys', 'export', '-o', out, '--passphrase=x'],
      ['keys', 'import', join(dataDir, 'exported.json'), '--passphrase', 'x'],
      ['decrypt', 'some.tar.gz', '--keys', join(dataDir, 'exported.json'), '--passphrase', 'x'],
    ]) {
      const res = await cli(...args);
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

  it('refuses an unknown command with usage and exit 2', async () => {
    const res = await cli('frobnicate');
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/unknown command/);
  });
});
