/** "Test my key file": can a keys file open the newest backup? Nothing is imported or changed. */
import {
  type EnvelopeHeader,
  type MasterKey,
  stanzaKeyIds,
  unwrapWithMasterKeys,
  verifyHeaderMac,
} from '../../shared/envelope';
import { isStorageError, type StorageProvider } from '../../shared/storage/index';
import type { Agent } from '../agent';
import { readBackup, readHeaderOfFile } from '../backup/reader';
import { AppError, describeError, isAppError } from '../errors';
import { parseKeysExport } from '../keys/keyring';
import { DESTINATION_TITLES, OFFSITE_KINDS, type OffsiteKind } from '../offsite/destinations';
import { describeDestinationError } from '../offsite/messages';
import { offsiteServiceFor, readRemoteHeader } from '../offsite/service';

export interface KeyCheckResult {
  ok: true;
  canOpen: boolean;
  /** Why not (or what was checked), in words. */
  reason: string;
  /** The backup tried: the newest local one, else the newest offsite copy; null if there is none. */
  backup: string | null;
  /**
   * Set when there is no local backup and an offsite copy was tried instead: the destination it was
   * read from. Only that copy's header was checked (the key unwrapped and the header's MAC), not its chunks.
   */
  destination?: OffsiteKind;
  installationId: string;
  /** The keys file's installation is this one. */
  sameInstallation: boolean;
  /** The envelope's error code when the keys do not fit (e.g. no_key, bad_mac). */
  error?: string;
}

/**
 * Parses the keys file (a bad file or passphrase is a 422, as on import), then opens the newest
 * backup's file key with its master keys, checks the header's MAC with it, and reads the whole backup
 * (every chunk and checksum) with those keys alone. The backup tried is the newest the keys file's
 * installation made here, else the newest here. With none of its installation here (a controller
 * rebuilt after a disaster), the newest copy on the enabled offsite destinations is tried too, by its
 * header only (see checkOffsite); its answer is given when the keys open it or nothing is here.
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
  const local = await agent.catalog.list();
  // The newest backup here that the keys file's installation made. On a controller rebuilt after a
  // disaster the newest one here is the new installation's own, which the old keys cannot open: the
  // old installation's copies offsite are what they are for.
  const ofTheKeys = local.find((backup) => backup.installationId === keyring.installationId);
  if (!ofTheKeys && local.length > 0 && !base.sameInstallation) {
    const offsite = await checkOffsite(agent, keys, keyring.installationId, base, 'of its installation');
    if (offsite.canOpen) return offsite;
  }
  const newest = ofTheKeys ?? local[0];
  if (!newest) return checkOffsite(agent, keys, keyring.installationId, base, '');
  const header = await readHeaderOfFile(agent.catalog.pathOf(newest.filename));
  const refused = await headerRefuses(header, keys);
  if (refused) {
    const other = base.sameInstallation
      ? ''
      : ` (the keys file is from installation ${keyring.installationId}, this is ${agent.keyring.installationId})`;
    return {
      ...base,
      canOpen: false,
      backup: newest.filename,
      reason: `These keys cannot open ${newest.filename}: it was made with key ${newest.keyIds.join(', ')}, which the file does not hold${other}`,
      error: describeError(refused).code,
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

/** Why `keys` cannot open the backup of `header` (its file key not unwrapped, or its MAC wrong); undefined when they can. */
async function headerRefuses(header: EnvelopeHeader, keys: MasterKey[]): Promise<unknown> {
  try {
    await verifyHeaderMac(header, await unwrapWithMasterKeys(header.stanzas, keys));
    return undefined;
  } catch (error) {
    return error;
  }
}

type Base = Pick<KeyCheckResult, 'ok' | 'installationId' | 'sameInstallation'>;

/** An offsite copy that could be tried: a destination's newest backup. */
interface Candidate {
  kind: OffsiteKind;
  filename: string;
}

/**
 * No local backup: the newest backup on the enabled destinations (each listed as the page's remote
 * list shows it, newest first), tried by its header alone: its stream is read only as far as the
 * header and then cancelled, so the backup is not downloaded. A destination that cannot be listed or
 * read is named in the reason and the next newest copy is tried. With none, today's answer.
 */
async function checkOffsite(
  agent: Agent,
  keys: MasterKey[],
  keysInstallation: string,
  base: Base,
  /** Which local backups there are none of: '' (none at all) or 'of its installation' (only another's). */
  noneHere: '' | 'of its installation',
): Promise<KeyCheckResult> {
  const service = offsiteServiceFor(agent);
  const offsite = agent.settings.get().offsite;
  const failures: string[] = [];
  const failed = (kind: OffsiteKind, error: unknown) => {
    const { code, message } = describeDestinationError(kind, offsite[kind], error);
    // listRemote's answer is an API error already: the destination's own code is in its details.
    const cause = error instanceof AppError ? error.details?.['code'] : code;
    const what = cause === 'unreachable' ? 'could not be reached' : 'could not be read';
    failures.push(`The ${DESTINATION_TITLES[kind]} ${what}: ${message.replace(/\.?$/, '.')}`);
    agent.log.warn('the key check could not read an offsite destination', {
      destination: kind,
      error: message,
    });
  };
  const candidates: Candidate[] = [];
  for (const kind of OFFSITE_KINDS.filter((k) => offsite[k].enabled)) {
    try {
      const newest = (await service.listRemote(kind))[0];
      if (newest) candidates.push({ kind, filename: newest.filename });
    } catch (error) {
      failed(kind, error);
    }
  }
  candidates.sort((a, b) => b.filename.localeCompare(a.filename));
  // Said after the answer, each as a sentence: the destinations that could not be listed or read.
  const notReached = () => (failures.length ? `. ${failures.join(' ')}` : '');
  for (const { kind, filename } of candidates) {
    const where = `the ${DESTINATION_TITLES[kind]}`;
    const tried = { ...base, backup: filename, destination: kind };
    let header: EnvelopeHeader;
    let provider: StorageProvider | undefined;
    try {
      provider = service.provider(kind);
      header = await readRemoteHeader(provider, filename);
    } catch (error) {
      // The copy itself is not a readable backup (not ours, cut short): the answer. A destination's failure: the next.
      if (!isStorageError(error) && !(error instanceof AppError && error.code !== 'not_a_backup')) {
        return {
          ...tried,
          canOpen: false,
          reason: `${filename} on ${where} cannot be read: ${describeError(error).message}${notReached()}`,
          error: describeError(error).code,
        };
      }
      failed(kind, error);
      continue;
    } finally {
      await provider?.close?.().catch(() => undefined);
    }
    const refused = await headerRefuses(header, keys);
    if (refused) {
      const other =
        header.core.installationId === keysInstallation
          ? ''
          : ` (the keys file is from installation ${keysInstallation}, the backup from another installation)`;
      return {
        ...tried,
        canOpen: false,
        reason: `These keys cannot open ${filename} on ${where}: it was made with key ${stanzaKeyIds(header.stanzas).join(', ')}, which the file does not hold${other}${notReached()}`,
        error: describeError(refused).code,
      };
    }
    return {
      ...tried,
      canOpen: true,
      reason: `There is no local backup${noneHere ? ` ${noneHere}` : ''}: these keys open the header of ${filename} on ${where}; only its header was checked (its chunks are checked when it is restored)${notReached()}`,
    };
  }
  return {
    ...base,
    canOpen: false,
    backup: null,
    reason: `There is no backup to try the keys on yet${failures.length ? ` here${notReached()}` : ''}`,
  };
}
