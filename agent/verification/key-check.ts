/** "Test my key file": can a keys file open the newest backup? Nothing is imported or changed. */
import {
  type EnvelopeHeader,
  installationTag,
  type MasterKey,
  stanzaKeyIds,
  unwrapWithMasterKeys,
  verifyHeaderMac,
} from '../../shared/envelope';
import { isStorageError, type StorageProvider } from '../../shared/storage/index';
import type { Agent } from '../agent';
import { readBackup, readHeaderOfFile } from '../backup/reader';
import { AppError, describeError, isAppError } from '../errors';
import { parseKeysExport, shortInstallationId } from '../keys/keyring';
import { DESTINATION_TITLES, OFFSITE_KINDS, type OffsiteKind } from '../offsite/destinations';
import { describeDestinationError } from '../offsite/messages';
import { offsiteServiceFor, readRemoteHeader } from '../offsite/service';

interface KeyCheckResult {
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
  const keysTag = installationTag(keyring.installationId);
  const ofTheKeys = local.find((backup) => backup.installationTag === keysTag);
  if (!ofTheKeys && local.length > 0 && !base.sameInstallation) {
    const offsite = await checkOffsite(agent, keys, keyring.installationId, base, 'of its installation');
    // A copy of its installation offsite is the answer, yes or no: the new installation's own backup here says nothing about the keys.
    if (offsite.result.canOpen || offsite.ofTheKeys) return offsite.result;
  }
  const newest = ofTheKeys ?? local[0];
  if (!newest) return (await checkOffsite(agent, keys, keyring.installationId, base, '')).result;
  const header = await readHeaderOfFile(agent.catalog.pathOf(newest.filename));
  const refused = await headerRefuses(header, keys);
  if (refused) {
    const other = base.sameInstallation
      ? ''
      : ` (the keys file is from installation ${shortInstallationId(keyring.installationId)}, this is ${shortInstallationId(agent.keyring.installationId)})`;
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

/** At most this many headers are read per destination looking for a copy of the keys file's installation. */
export const HEADERS_READ_PER_DESTINATION = 20;

/** An offsite copy whose header was read. */
interface Candidate {
  kind: OffsiteKind;
  filename: string;
  header: EnvelopeHeader;
}

/** What was found on one destination, newest first. */
interface Search {
  kind: OffsiteKind;
  /** The backups it holds. */
  held: number;
  /** The headers read (or tried) before the search stopped. */
  looked: number;
  /** The newest copy of the keys file's installation, if one was among those looked at. */
  ofTheKeys?: Candidate;
  /** The newest copy whose header could be read. */
  newest?: Candidate;
  /** The newest copy that is not a readable backup, and why (the answer only when nothing else is there). */
  unreadable?: { filename: string; error: unknown };
}

/** A list of words: "a", "a and b", "a, b and c". */
function wordList(words: string[]): string {
  return words.length < 2 ? (words[0] ?? '') : `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`;
}

/** The answer when no backup was found anywhere to try the keys on: what to do next. */
function nothingToTry(
  base: Base,
  enabled: OffsiteKind[],
  empty: OffsiteKind[],
  notReached: string,
): KeyCheckResult {
  const many = empty.length > 1;
  const holdsNone = empty.length
    ? `, and ${wordList(empty.map((k) => `the ${DESTINATION_TITLES[k]}`))} ${many ? 'hold' : 'holds'} no backup`
    : '';
  let reason = `There is no backup here to try the keys on${holdsNone}${notReached}`;
  if (enabled.length === 0) {
    reason =
      'There is no backup here to try the keys on, and no offsite destination is set up: set up the destination that holds your copies (page: Offsite), then check again';
  } else if (empty.length === enabled.length) {
    reason = `There is no backup here to try the keys on${holdsNone}: check that ${many ? 'they are the ones that hold' : 'it is the one that holds'} your copies (page: Offsite), then check again`;
  }
  return { ...base, canOpen: false, backup: null, reason };
}

/**
 * No local backup of the keys file's installation: the copies on the enabled destinations (each listed
 * as the page's remote list shows it, newest first) are looked at one by one, by their header alone
 * (its stream is read only as far as the header and then cancelled, so no backup is downloaded), for
 * the newest copy of the keys file's installation, at most HEADERS_READ_PER_DESTINATION per destination.
 * On a rebuilt controller that already uploaded a backup of its own, that is an older copy, not the
 * newest. The keys are tried on the newest such copy of all destinations; with none anywhere, on the
 * newest copy, saying that none of the keys' installation was found among those looked at. A
 * destination that cannot be listed or read is named in the reason; a copy that is not a readable
 * backup is skipped with a note (the answer only when nothing else is there).
 */
async function checkOffsite(
  agent: Agent,
  keys: MasterKey[],
  keysInstallation: string,
  base: Base,
  /** Which local backups there are none of: '' (none at all) or 'of its installation' (only another's). */
  noneHere: '' | 'of its installation',
): Promise<{ result: KeyCheckResult; ofTheKeys: boolean }> {
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
  const skipped: string[] = [];
  const enabled = OFFSITE_KINDS.filter((k) => offsite[k].enabled);
  const searches: Search[] = [];
  for (const kind of enabled) {
    let listed: string[];
    try {
      listed = (await service.listRemote(kind)).map((remote) => remote.filename);
    } catch (error) {
      failed(kind, error);
      continue;
    }
    searches.push(await searchDestination(agent, kind, listed, keysInstallation, keys, failed, skipped));
  }
  // Said after the answer, each as a sentence: the destinations that could not be listed or read, the copies skipped.
  const notes = () => {
    const more = skipped.length > 3 ? [`${skipped.length - 3} more copies were skipped.`] : [];
    const sentences = [...failures, ...skipped.slice(0, 3), ...more];
    return sentences.length ? `. ${sentences.join(' ')}` : '';
  };
  const newestOf = (found: (Candidate | undefined)[]) =>
    found
      .filter((c): c is Candidate => c !== undefined)
      .sort((a, b) => b.filename.localeCompare(a.filename))[0];
  const ofTheKeys = newestOf(searches.map((s) => s.ofTheKeys));
  const chosen = ofTheKeys ?? newestOf(searches.map((s) => s.newest));
  if (!chosen) {
    const unreadable = searches
      .filter((s) => s.unreadable)
      .sort((a, b) => b.unreadable!.filename.localeCompare(a.unreadable!.filename))[0];
    if (unreadable?.unreadable) {
      // Nothing readable anywhere: the newest unreadable copy is the answer (its own note is not repeated).
      const { filename, error } = unreadable.unreadable;
      const own = `${filename} on the ${DESTINATION_TITLES[unreadable.kind]} was skipped`;
      skipped.splice(0, skipped.length, ...skipped.filter((note) => !note.startsWith(own)));
      return {
        ofTheKeys: false,
        result: {
          ...base,
          backup: filename,
          destination: unreadable.kind,
          canOpen: false,
          reason: `${filename} on the ${DESTINATION_TITLES[unreadable.kind]} cannot be read: ${describeError(error).message}${notes()}`,
          error: describeError(error).code,
        },
      };
    }
    const empty = searches.filter((s) => s.held === 0).map((s) => s.kind);
    return { ofTheKeys: false, result: nothingToTry(base, enabled, empty, notes()) };
  }
  const { kind, filename, header } = chosen;
  const where = `the ${DESTINATION_TITLES[kind]}`;
  const tried = { ...base, backup: filename, destination: kind };
  // With no copy of the keys' installation found: how many copies were looked at, and where.
  const noneFound = ofTheKeys
    ? ''
    : `; no copy of installation ${shortInstallationId(keysInstallation)} was found among ${wordList(
        searches
          .filter((s) => s.looked > 0)
          .map((s) => {
            const on = `on the ${DESTINATION_TITLES[s.kind]}`;
            if (s.looked === s.held) return `the ${s.looked} ${s.looked === 1 ? 'copy' : 'copies'} ${on}`;
            const bound =
              s.looked === HEADERS_READ_PER_DESTINATION
                ? `, at most ${HEADERS_READ_PER_DESTINATION} are looked at`
                : '';
            return `the newest ${s.looked} of the ${s.held} copies ${on}${bound}`;
          }),
      )}`;
  const refused = await headerRefuses(header, keys);
  if (refused) {
    const other =
      header.core.installationTag === installationTag(keysInstallation)
        ? ''
        : ` (the keys file is from installation ${shortInstallationId(keysInstallation)}, the backup from another installation${noneFound})`;
    return {
      ofTheKeys: ofTheKeys !== undefined,
      result: {
        ...tried,
        canOpen: false,
        reason: `These keys cannot open ${filename} on ${where}: it was made with key ${stanzaKeyIds(header.stanzas).join(', ')}, which the file does not hold${other}${notes()}`,
        error: describeError(refused).code,
      },
    };
  }
  return {
    ofTheKeys: ofTheKeys !== undefined,
    result: {
      ...tried,
      canOpen: true,
      reason: `There is no local backup${noneHere ? ` ${noneHere}` : ''}: these keys open the header of ${filename} on ${where}; only its header was checked (its chunks are checked when it is restored)${notes()}`,
    },
  };
}

/**
 * Reads the headers of one destination's copies (`listed`, newest first) one by one until a copy of
 * the keys file's installation, or one the keys file holds a key of, is found, at most
 * HEADERS_READ_PER_DESTINATION. A copy that is not a readable backup is noted in `skipped`; a failure
 * of the destination itself (`failed`) ends the search there with what was found so far.
 */
async function searchDestination(
  agent: Agent,
  kind: OffsiteKind,
  listed: string[],
  keysInstallation: string,
  keys: MasterKey[],
  failed: (kind: OffsiteKind, error: unknown) => void,
  skipped: string[],
): Promise<Search> {
  const search: Search = { kind, held: listed.length, looked: 0 };
  const keyIds = new Set(keys.map((k) => k.id));
  const where = `the ${DESTINATION_TITLES[kind]}`;
  let provider: StorageProvider | undefined;
  try {
    provider = offsiteServiceFor(agent).provider(kind);
    for (const filename of listed.slice(0, HEADERS_READ_PER_DESTINATION)) {
      search.looked += 1;
      let header: EnvelopeHeader;
      try {
        header = await readRemoteHeader(provider, filename);
      } catch (error) {
        // The copy itself is not a readable backup (not ours, cut short): skipped. A destination's failure: the end here.
        if (!isStorageError(error) && !(error instanceof AppError && error.code !== 'not_a_backup')) {
          search.unreadable ??= { filename, error };
          skipped.push(
            `${filename} on ${where} was skipped: ${describeError(error).message.replace(/\.?$/, '.')}`,
          );
          continue;
        }
        failed(kind, error);
        break;
      }
      const candidate = { kind, filename, header };
      search.newest ??= candidate;
      if (
        header.core.installationTag === installationTag(keysInstallation) ||
        stanzaKeyIds(header.stanzas).some((id) => keyIds.has(id))
      ) {
        search.ofTheKeys = candidate;
        break;
      }
    }
  } catch (error) {
    failed(kind, error);
  } finally {
    await provider?.close?.().catch(() => undefined);
  }
  return search;
}
