// Importing keys never loses a key (same-id keys with other bytes refused, concurrent and cross-process imports kept); scrypt limits.

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isAppError } from '../../agent/errors';
import {
  buildKeysExport,
  createKeyringFile,
  Keyring,
  type KeyringFile,
  parseKeysExport,
} from '../../agent/keys/keyring';
import { installationTag } from '../../shared/envelope';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function keyringPath(): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), 'keyring-'));
  return join(dir, 'keyring.json');
}
const onDisk = async (path: string): Promise<KeyringFile> =>
  JSON.parse(await readFile(path, 'utf8')) as KeyringFile;
const keysOf = (file: KeyringFile) => file.masterKeys.map((k) => `${k.id}:${k.key}`).sort();

describe('keys import', () => {
  it('refuses a key with one of our key ids but other bytes (422) and leaves keyring.json byte-identical', async () => {
    const path = await keyringPath();
    const keyring = await Keyring.loadOrCreate(path);
    const ours = keyring.toFile().masterKeys[0]!;
    const other = createKeyringFile();
    other.masterKeys[0]!.id = ours.id;
    const before = await readFile(path, 'utf8');
    const error = await keyring.importKeys(other).catch((e: unknown) => e);
    expect(isAppError(error, 'bad_keys_file')).toBe(true);
    expect((error as { status: number }).status).toBe(422);
    expect((error as Error).message).toMatch(new RegExp(`different key under our key id ${ours.id}`));
    expect(await readFile(path, 'utf8')).toBe(before);
    expect(keyring.masterKeys.map((k) => Buffer.from(k.key).toString('base64url'))).toEqual([ours.key]);
  });

  it('accepts a keys file holding our own key again (same id, same bytes)', async () => {
    const path = await keyringPath();
    const keyring = await Keyring.loadOrCreate(path);
    const mine = keyring.toFile();
    const other = createKeyringFile();
    other.masterKeys.push({ ...mine.masterKeys[0]!, status: 'retired' });
    await keyring.importKeys(other);
    expect(keysOf(await onDisk(path))).toEqual(keysOf({ ...mine, masterKeys: other.masterKeys }));
  });

  it('keeps the keys of both of two concurrent imports, and ours', async () => {
    const path = await keyringPath();
    const keyring = await Keyring.loadOrCreate(path);
    const mine = keyring.toFile();
    const a = createKeyringFile();
    const b = createKeyringFile();
    await Promise.all([keyring.importKeys(a), keyring.importKeys(b)]);
    const expected = keysOf({ ...mine, masterKeys: [...mine.masterKeys, ...a.masterKeys, ...b.masterKeys] });
    expect(keysOf(await onDisk(path))).toEqual(expected);
    expect(keysOf(keyring.toFile())).toEqual(expected);
    expect((await onDisk(path)).masterKeys.filter((k) => k.status === 'active')).toHaveLength(1);
  });

  it('keeps a key another process (the CLI) imported into the file meanwhile', async () => {
    const path = await keyringPath();
    const agentKeyring = await Keyring.loadOrCreate(path);
    const cliKeyring = await Keyring.loadOrCreate(path);
    const mine = agentKeyring.toFile();
    const a = createKeyringFile();
    const b = createKeyringFile();
    await cliKeyring.importKeys(a);
    await agentKeyring.importKeys(b);
    const expected = keysOf({ ...mine, masterKeys: [...mine.masterKeys, ...a.masterKeys, ...b.masterKeys] });
    expect(keysOf(await onDisk(path))).toEqual(expected);
    expect(keysOf(agentKeyring.toFile())).toEqual(expected);
    expect(agentKeyring.activeKey.id).toBe(b.masterKeys[0]!.id);
  });
});

describe('a running agent and a CLI import', () => {
  it('uses the keys the CLI imported at once, without an import of its own or a restart', async () => {
    const path = await keyringPath();
    const agentKeyring = await Keyring.loadOrCreate(path);
    const ours = agentKeyring.activeKey.id;
    const cliKeyring = await Keyring.loadOrCreate(path);
    const imported = createKeyringFile();
    await cliKeyring.importKeys(imported);
    // The imported installation's backups open with the agent's keys now, and new ones use its key.
    expect(agentKeyring.activeKey.id).toBe(imported.masterKeys[0]!.id);
    expect(agentKeyring.masterKeys.map((k) => k.id)).toEqual([imported.masterKeys[0]!.id, ours]);
    expect(agentKeyring.installationId).toBe(imported.installationId);
    expect(agentKeyring.owns(installationTag(imported.installationId), [imported.masterKeys[0]!.id])).toBe(
      true,
    );
  });
});

describe('keys file scrypt parameters', () => {
  const withParams = async (params: { N: number; r: number; p: number }) => {
    const file = JSON.parse(await buildKeysExport(createKeyringFile(), 'correct horse battery')) as {
      protected: Record<string, unknown>;
    };
    Object.assign(file.protected, params);
    return JSON.stringify(file);
  };
  const refusal = (text: string) =>
    parseKeysExport(text, 'correct horse battery').then(
      () => undefined,
      (e: unknown) => e,
    );

  for (const [what, params] of [
    ['the largest the format used to accept (N=2^20, r=32, p=16)', { N: 1 << 20, r: 32, p: 16 }],
    ['N just above what export writes allows (2^18)', { N: 1 << 18, r: 8, p: 1 }],
    ['r above 8', { N: 1 << 15, r: 9, p: 1 }],
    ['p above 2', { N: 1 << 15, r: 8, p: 3 }],
    ['N not a power of two', { N: 3000, r: 8, p: 1 }],
  ] as const) {
    it(`refuses ${what} with 422 bad_keys_file before deriving a key`, async () => {
      const error = await refusal(await withParams(params));
      expect(isAppError(error, 'bad_keys_file')).toBe(true);
      expect((error as { status: number }).status).toBe(422);
      expect((error as Error).message).toMatch(/scrypt parameters/);
    });
  }

  it('opens a file with the parameters export writes', async () => {
    const other = createKeyringFile();
    const parsed = await parseKeysExport(await buildKeysExport(other, 'pass phrase'), 'pass phrase');
    expect(parsed.installationId).toBe(other.installationId);
  });
});
