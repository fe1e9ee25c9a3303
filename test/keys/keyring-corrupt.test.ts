// A keyring.json that is not JSON is refused without quoting it: its master keys never reach a log or the CLI.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createKeyringFile, Keyring, type KeyringFile } from '../../agent/keys/keyring';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function keyringPath(): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), 'keyring-corrupt-'));
  return join(dir, 'keyring.json');
}

/** The keyring's text with the opening quote of `value` gone: JSON.parse then fails right at the secret. */
function unquoted(text: string, value: string): string {
  expect(text).toContain(`"${value}"`);
  return text.replace(`"${value}"`, `${value}"`);
}

/** Every secret of `file`, and the installation id (the Cloud DR recovery credential). */
function secretsOf(file: KeyringFile): string[] {
  return [file.installationId, file.signingKey.privateJwk.d, ...file.masterKeys.map((k) => k.key)];
}

function expectNoSecret(message: string, file: KeyringFile): void {
  // Even a few characters of a key are too many: V8 quotes about ten around the fault.
  for (const secret of secretsOf(file)) expect(message).not.toContain(secret.slice(0, 6));
}

describe('a corrupt keyring.json', () => {
  it('at start: "corrupt: move it aside ... import your keys export", without a character of its master key', async () => {
    const path = await keyringPath();
    const file = (await Keyring.loadOrCreate(path)).toFile();
    const text = await readFile(path, 'utf8');
    for (const secret of secretsOf(file)) {
      await writeFile(path, unquoted(text, secret));
      const error = (await Keyring.loadOrCreate(path).catch((e: unknown) => e)) as Error;
      expect(error).toBeInstanceOf(Error);
      expect(error.message).toBe(
        `the keyring at ${path} is corrupt: move it aside (keep it), then import your keys export: gem-backup keys import FILE; with Cloud DR on, then confirm the data here is still this installation's: gem-backup dr push --data-is-current`,
      );
      expectNoSecret(error.message, file);
      expect(JSON.stringify(error)).not.toContain(secret.slice(0, 6));
    }
  });

  it('found by an import (written meanwhile by another process): the same error, nothing quoted, nothing written', async () => {
    const path = await keyringPath();
    const keyring = await Keyring.loadOrCreate(path);
    const file = keyring.toFile();
    const broken = unquoted(await readFile(path, 'utf8'), file.masterKeys[0]!.key);
    await writeFile(path, broken);
    const error = (await keyring.importKeys(createKeyringFile()).catch((e: unknown) => e)) as Error;
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toMatch(/is corrupt: move it aside \(keep it\), then import your keys export/);
    expectNoSecret(error.message, file);
    expect(await readFile(path, 'utf8')).toBe(broken);
  });
});
