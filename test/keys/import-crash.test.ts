/**
 * A `gem-backup keys import` of another installation killed (power cut, SIGKILL) just before its new
 * keyring is put in place: the box keeps its keys and identity, and nothing holds its Cloud DR pushes
 * back as if the import had happened. The CLI runs under strace, which kills it at the rename of the
 * keyring's temp file over keyring.json (its second rename, after the record of the identity change).
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKeysExport, createKeyringFile, Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { LastRestoreStore } from '../../agent/restore/last-restore';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import { seededEnvironment } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let built: BuiltCli;
let dataDir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: () => startPostgres({ fsync: false }), built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-keys-import-crash-'));
});
afterAll(async () => {
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('a keys import killed before its keyring is written', () => {
  it('leaves the keys and holds no Cloud DR push; the import done again holds them', async () => {
    const keyringPath = join(dataDir, 'keyring.json');
    const before = await readFile(keyringPath, 'utf8');
    const own = (await Keyring.load(keyringPath)).installationId;
    const other = createKeyringFile();
    const file = join(dataDir, 'other-keys.json');
    await writeFile(file, await buildKeysExport(other));
    const killed = await killedAtKeyringRename(file);
    expect(killed.code, killed.stderr + killed.stdout).not.toBe(0);
    expect(killed.stdout).not.toContain('keys imported');
    expect(await readFile(keyringPath, 'utf8')).toBe(before);

    const restores = new LastRestoreStore(join(dataDir, 'last-restore.json'), silentLogger);
    // Killed between the two writes: the identity change recorded, the keyring not replaced.
    expect((await restores.get()).identityChangedAt).toBeDefined();
    const held = async () => restores.awaitingRestore((await Keyring.load(keyringPath)).installationId);
    expect(await held()).toBe(false);
    const status = await runProcess(process.execPath, [built.path, 'dr', 'status', '--json'], {
      env,
      cwd: process.cwd(),
    });
    expect(JSON.parse(status.stdout)).toMatchObject({ awaitingRestore: false });

    const imported = await runProcess(process.execPath, [built.path, 'keys', 'import', file], {
      env,
      cwd: process.cwd(),
    });
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);
    expect((await Keyring.load(keyringPath)).installationId).toBe(other.installationId);
    expect(own).not.toBe(other.installationId);
    expect(await held()).toBe(true);
  });

  it('of a third installation, after that import: the pushes stay held (the earlier import still awaits a restore)', async () => {
    const keyringPath = join(dataDir, 'keyring.json');
    const before = await readFile(keyringPath, 'utf8');
    const restores = new LastRestoreStore(join(dataDir, 'last-restore.json'), silentLogger);
    const held = async () => restores.awaitingRestore((await Keyring.load(keyringPath)).installationId);
    expect(await held()).toBe(true);
    const third = createKeyringFile();
    const file = join(dataDir, 'third-keys.json');
    await writeFile(file, await buildKeysExport(third));
    const killed = await killedAtKeyringRename(file);
    expect(killed.code, killed.stderr + killed.stdout).not.toBe(0);
    expect(await readFile(keyringPath, 'utf8')).toBe(before);
    expect((await restores.get()).identityChangedTo).toBe(third.installationId);
    // The keyring still holds the installation imported before, whose backups were never restored here.
    expect(await held()).toBe(true);
    const status = await runProcess(process.execPath, [built.path, 'dr', 'status', '--json'], {
      env,
      cwd: process.cwd(),
    });
    expect(JSON.parse(status.stdout)).toMatchObject({ awaitingRestore: true });
    // And once more: a second import that never happened does not lose the first either.
    await writeFile(file, await buildKeysExport(createKeyringFile()));
    expect((await killedAtKeyringRename(file)).code).not.toBe(0);
    expect(await readFile(keyringPath, 'utf8')).toBe(before);
    expect(await held()).toBe(true);
  });
});

/** `gem-backup keys import FILE`, killed by strace at its second rename (keyring.json's). */
function killedAtKeyringRename(file: string) {
  const renames = 'rename,renameat,renameat2';
  return runProcess(
    'strace',
    [
      '-f',
      '-qq',
      '-o',
      '/dev/null',
      // An import renames twice: last-restore.json's record of the identity change, then keyring.json.
      ...['-e', `trace=${renames}`, '-e', `inject=${renames}:signal=KILL:when=2`],
      process.execPath,
      built.path,
      'keys',
      'import',
      file,
    ],
    // strace counts calls per thread: one libuv thread makes both renames.
    { env: { ...env, UV_THREADPOOL_SIZE: '1' }, cwd: process.cwd() },
  );
}
