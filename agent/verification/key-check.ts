/** "Test my key file": can a keys file open the newest backup? Nothing is imported or changed. */
import { unwrapWithMasterKeys, verifyHeaderMac } from '../../shared/envelope';
import type { Agent } from '../agent';
import { readBackup, readHeaderOfFile } from '../backup/reader';
import { describeError, isAppError } from '../errors';
import { parseKeysExport } from '../keys/keyring';

export interface KeyCheckResult {
  ok: true;
  canOpen: boolean;
  /** Why not (or what was checked), in words. */
  reason: string;
  /** The backup tried: the newest local one; null if there is none. */
  backup: string | null;
  installationId: string;
  /** The keys file's installation is this one. */
  sameInstallation: boolean;
  /** The envelope's error code when the keys do not fit (e.g. no_key, bad_mac). */
  error?: string;
}

/**
 * Parses the keys file (a bad file or passphrase is a 422, as on import), then opens the newest
 * backup's file key with its master keys, checks the header's MAC with it, and reads the whole backup
 * (every chunk and checksum) with those keys alone.
 */
export async function checkKeysFile(
  agent: Agent,
  text: string,
  passphrase?: string,
): Promise<KeyCheckResult> {
  const keyring = await parseKeysExport(text, passphrase);
  const keys = keyring.masterKeys.map((k) => ({ id: k.id, key: Buffer.from(k.key, 'base64url') }));
  const base = {
    ok: true as const,
    installationId: keyring.installationId,
    sameInstallation: keyring.installationId === agent.keyring.installationId,
  };
  const newest = (await agent.catalog.list())[0];
  if (!newest) {
    return { ...base, canOpen: false, backup: null, reason: 'There is no backup to try the keys on yet' };
  }
  const header = await readHeaderOfFile(agent.catalog.pathOf(newest.filename));
  try {
    const fileKey = await unwrapWithMasterKeys(header.stanzas, keys);
    await verifyHeaderMac(header, fileKey);
  } catch (error) {
    const other = base.sameInstallation
      ? ''
      : ` (the keys file is from installation ${keyring.installationId}, this is ${agent.keyring.installationId})`;
    return {
      ...base,
      canOpen: false,
      backup: newest.filename,
      reason: `These keys cannot open ${newest.filename}: it was made with key ${newest.keyIds.join(', ')}, which the file does not hold${other}`,
      error: describeError(error).code,
    };
  }
  try {
    await readBackup(agent.catalog.pathOf(newest.filename), { keys });
  } catch (error) {
    if (isAppError(error, 'no_key')) throw error;
    return {
      ...base,
      canOpen: false,
      backup: newest.filename,
      reason: `The keys match, but ${newest.filename} cannot be read: ${describeError(error).message}`,
    };
  }
  return {
    ...base,
    canOpen: true,
    backup: newest.filename,
    reason: `These keys open ${newest.filename}: every chunk and checksum verified`,
  };
}
