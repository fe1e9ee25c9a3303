import { mkdtemp, readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedGemDatabase, writeSampleFolders } from '../../agent/db/seed';
import { Keyring } from '../../agent/keys/keyring';
import { runProcess } from '../../agent/system/spawn';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

let pg: TestPostgres;
let dataDir: string;
let env: NodeJS.ProcessEnv;

const cli = (...args: string[]) =>
  runProcess(process.execPath, ['bin/gem-backup.js', ...args], { env, cwd: process.cwd() });

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-cli-'));
  const url = await pg.createDatabase();
  const keyring = await Keyring.loadOrCreate(join(dataDir, 'keyring.json'));
  await withSql(url, (sql) => seedGemDatabase(sql, keyring.activeKey));
  await writeSampleFolders(join(dataDir, 'scripts'), join(dataDir, 'config'));
  env = {
    ...process.env,
    DATABASE_URL: url,
    GEM_DATA_DIR: dataDir,
    GEM_SCRIPTS_DIR: join(dataDir, 'scripts'),
    GEM_CONFIG_DIR: join(dataDir, 'config'),
    GEM_PG_BIN: pg.binDir,
  };
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

  it('exports keys to a 0600 file sealed under a passphrase', async () => {
    const out = join(dataDir, 'exported.json');
    const res = await cli('keys', 'export', '-o', out, '--passphrase', 'long enough passphrase');
    expect(res.code).toBe(0);
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(out, 'utf8'))).toHaveProperty('protected.kdf', 'scrypt');
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
