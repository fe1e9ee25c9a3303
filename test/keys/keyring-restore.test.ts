/**
 * A keyring.json found corrupt (a disk's bit rot, a hand edit): the one line the agent and the CLI say
 * names the way back, and that way works: the keyring set aside, the keys export imported, the backups
 * made before readable again.
 */
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import { seededEnvironment } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let built: BuiltCli;
let dataDir: string;
let env: NodeJS.ProcessEnv;
/** The built CLI; exports and imports under one passphrase. */
const cli = (...args: string[]) =>
  runProcess(process.execPath, [built.path, ...args], {
    env: { ...env, GEM_KEYS_PASSPHRASE: 'keys of the old box' },
    cwd: process.cwd(),
  });

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: () => startPostgres({ fsync: false }), built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-keyring-restore-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('a corrupt keyring.json', () => {
  it('is refused with the way back, and following it the backups made before open again', async () => {
    const created = await cli('create');
    expect(created.code, created.stderr).toBe(0);
    const backup = /created (gem-backup-\S+\.tar\.gz)/.exec(created.stdout)?.[1];
    const exported = join(dataDir, 'saved-keys.json');
    expect((await cli('keys', 'export', '-o', exported)).code).toBe(0);
    const keyring = join(dataDir, 'keyring.json');
    await writeFile(keyring, (await readFile(keyring, 'utf8')).slice(0, 100));

    // The command a person runs first with the export in hand is refused, saying what to do instead.
    const refused = await cli('keys', 'import', exported);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      `gem-backup: the keyring at ${keyring} is corrupt: move it aside (keep it), then import your keys export: gem-backup keys import FILE; with Cloud DR on, then confirm the data here is still this installation's: gem-backup dr push --data-is-current`,
    );
    await rename(keyring, `${keyring}.corrupt`);
    const imported = await cli('keys', 'import', exported);
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);
    // The import cannot tell this box from a rebuilt one: Cloud DR pushes wait for the confirmation
    // the line asks for (test/dr covers `dr push --data-is-current` lifting the hold).
    const status = await cli('dr', 'status', '--json');
    expect(JSON.parse(status.stdout)).toMatchObject({ awaitingRestore: true });
    const verified = await cli('verify', backup!);
    expect(verified.stderr).toBe('');
    expect(verified.stdout).toMatch(/: ok \(.*every chunk and checksum verified\)$/);
  });
});
