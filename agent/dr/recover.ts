/** Recovery on a fresh install: fetch the slot with a one-time X25519 key, take back the keys, store and restore the backup. */
import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import type { JWK } from 'jose';
import { RECOVER_FILE_KEY_HEADER, RECOVER_KEYRING_HEADER, SLOT_HEADERS } from '../../shared/api/cloud';
import {
  installationTag,
  type MasterKey,
  type Stanza,
  unwrapWithMasterKeys,
  unwrapWithX25519,
} from '../../shared/envelope';
import type { Agent } from '../agent';
import { readBackup } from '../backup/reader';
import { noSpace, receiveUpload, usableSpace } from '../backup/upload';
import { hasGemSchema } from '../db/seed';
import { AppError, describeError, isAppError, isErrorCode } from '../errors';
import type { JobContext } from '../jobs/runner';
import { type KeyringFile, keyringFileSchema, shortInstallationId } from '../keys/keyring';
import { type RestoreFaults, type RestoreResult, restoreFromFile } from '../restore/restore';
import { mkdirDurable, TEMP_PREFIX, writeFileAtomic } from '../system/atomic-file';
import type { DrClient } from './client';
import { type DrStateStore, slotStateOf } from './state';
import {
  INSTALLATION_ID_RULE,
  normalizeInstallationId,
  type UnfinishedRecoveryFile,
  type UnfinishedRecoveryRecord,
} from './unfinished';

/** Deliberate faults for tests and drills, read at each recovery. */
export interface RecoverFaults {
  /** Passed to the restore of the recovered backup (e.g. `requiredBytes` for a full disk). */
  restore?: RestoreFaults;
}

interface RecoverDeps {
  agent: Agent;
  client: DrClient;
  state: DrStateStore;
  unfinished: UnfinishedRecoveryFile;
  faults?: RecoverFaults;
}

export interface RecoverResult {
  installationId: string;
  /** The recovered backup, now a local backup. */
  backup: string;
  backupCreatedAt: string;
  restore: RestoreResult;
}

/** A key pair for this one recovery only; the private half never leaves memory. */
function oneTimeKeyPair(): { publicJwk: JWK; privateJwk: JWK } {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  const kid = `recovery-${randomBytes(8).toString('hex')}`;
  return {
    publicJwk: { ...(publicKey.export({ format: 'jwk' }) as JWK), kid },
    privateJwk: { ...(privateKey.export({ format: 'jwk' }) as JWK), kid },
  };
}

function headerValue(headers: Record<string, string | string[] | undefined>, name: string): string {
  const value = headers[name.toLowerCase()];
  if (typeof value !== 'string' || value.length === 0) {
    throw new AppError('dependency_down', `the DR cloud's recovery answer lacks ${name}`);
  }
  return value;
}

/**
 * The download's size for its progress: the content-length, or the slot's size the cloud names beside
 * a streamed answer (SLOT_HEADERS.size); undefined when neither says it.
 */
function downloadSize(
  headers: Record<string, string | string[] | undefined>,
  declared: number,
): number | undefined {
  if (Number.isSafeInteger(declared) && declared >= 0) return declared;
  const slot = headers[SLOT_HEADERS.size.toLowerCase()];
  const size = typeof slot === 'string' && /^\d+$/.test(slot) ? Number(slot) : Number.NaN;
  return Number.isSafeInteger(size) ? size : undefined;
}

/** The recovered keyring, checked to be a keyring of installation `installationId`; a clear error otherwise. */
function parseRecoveredKeyring(bytes: Uint8Array, installationId: string): KeyringFile {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new AppError('dependency_down', 'the recovered keyring from the DR cloud is not a valid keyring');
  }
  const parsed = keyringFileSchema.safeParse(json);
  if (!parsed.success) {
    throw new AppError('dependency_down', 'the recovered keyring from the DR cloud is not a valid keyring');
  }
  if (parsed.data.installationId !== installationId) {
    throw new AppError('dependency_down', 'the recovered keyring is not the keyring of this installation id');
  }
  return parsed.data;
}

/** Refuses a recovered keyring whose master keys do not unwrap the backup's file key to `fileKey`. */
async function checkKeyringOpensBackup(
  recovered: KeyringFile,
  stanzas: readonly Stanza[],
  fileKey: Uint8Array,
): Promise<void> {
  const masterKeys: MasterKey[] = recovered.masterKeys.map((k) => ({
    id: k.id,
    key: Buffer.from(k.key, 'base64url'),
  }));
  let unwrapped: Uint8Array | undefined;
  try {
    unwrapped = await unwrapWithMasterKeys(stanzas, masterKeys);
  } catch {
    // no_key or a stanza that does not open: either way these keys cannot read the backup.
  } finally {
    for (const k of masterKeys) k.key.fill(0);
  }
  const same =
    unwrapped !== undefined && unwrapped.length === fileKey.length && timingSafeEqual(unwrapped, fileKey);
  unwrapped?.fill(0);
  if (!same) {
    throw new AppError(
      'dependency_down',
      "the recovered keyring from the DR cloud does not hold the backup's master key; nothing was changed",
    );
  }
}

/**
 * What a recovery would replace here, or null on a fresh install: a box that holds no backup of its own
 * installation, never enrolled with nor pushed to the DR cloud as it, and was not recovered before. Its
 * own installation is the keyring's, or, while an unfinished recovery carries the recovered identity,
 * the one the box had before it (so a retry is judged as the first attempt was).
 */
export async function whatRecoveryReplaces(
  deps: Pick<RecoverDeps, 'agent' | 'state' | 'unfinished'>,
): Promise<string | null> {
  const { keyring, catalog } = deps.agent;
  const record = await deps.unfinished.read().catch(() => null);
  const own =
    record !== null && keyring.installationId === record.installationId
      ? record.previousInstallationId
      : keyring.installationId;
  const tag = installationTag(own);
  const backups = (await catalog.list()).filter((b) => b.installationTag === tag);
  // Its own id's slot fields: while the recovered identity is active, they are kept as a former id's.
  const state = slotStateOf(await deps.state.get(), own) ?? {};
  const facts: string[] = [];
  if (backups.length > 0) {
    const count = backups.length === 1 ? 'a backup' : `${backups.length} backups`;
    facts.push(
      `${count} of its own installation ${shortInstallationId(own)} (the newest ${backups[0]!.filename})`,
    );
  }
  if (state.enrollment?.installationId === own) {
    facts.push(`enrolled with the DR cloud as ${shortInstallationId(own)} since ${state.enrollment.at}`);
  }
  if (state.lastSuccess) facts.push(`pushed to the DR cloud ${state.lastSuccess.at}`);
  if (state.recovered) facts.push(`recovered from the DR cloud ${state.recovered.at}`);
  if (facts.length === 0) return null;
  return `this box is not a fresh install (${facts.join('; ')}): a recovery replaces its database, scripts and config with the recovered installation's, and its keys and identity with that installation's`;
}

/**
 * Recovers installation `installationId` onto this agent. The backup is downloaded and checked with
 * the recovered file key, and the recovered keyring must open it, before anything changes; then the
 * recovery is recorded as unfinished (pushes are refused until it is done), the recovered keyring
 * becomes the active keys (this installation takes the recovered identity, its own keys are kept as
 * retired), the backup joins the local backups (a copy stored by an earlier attempt with the same
 * bytes is reused), and it is restored through the safe restore path; only then is the record cleared.
 */
export async function recoverFromCloud(
  deps: RecoverDeps,
  ctx: JobContext,
  installationId: string,
): Promise<RecoverResult> {
  const { agent, client } = deps;
  const id = normalizeInstallationId(installationId);
  if (id === undefined) throw new AppError('bad_request', INSTALLATION_ID_RULE);

  ctx.phase('download');
  const recipient = oneTimeKeyPair();
  const res = await client.recover(id, recipient.publicJwk, ctx.signal);
  const declared = Number(res.headers['content-length'] ?? Number.NaN);
  // Known as soon as the answer starts: the page and the CLI can show a percentage and the time left.
  const expected = downloadSize(res.headers, declared);
  if (expected !== undefined) ctx.progress(0, expected);
  let fileKey: Uint8Array;
  let recovered: KeyringFile;
  try {
    fileKey = await unwrapWithX25519(headerValue(res.headers, RECOVER_FILE_KEY_HEADER), recipient.privateJwk);
    const keyringBytes = await unwrapWithX25519(
      headerValue(res.headers, RECOVER_KEYRING_HEADER),
      recipient.privateJwk,
    );
    try {
      recovered = parseRecoveredKeyring(keyringBytes, id);
    } finally {
      keyringBytes.fill(0);
    }
  } catch (error) {
    res.body.destroy();
    if (error instanceof AppError) throw error;
    throw new AppError(
      'dependency_down',
      'the recovery material from the DR cloud does not open with our one-time key',
    );
  }

  // 1. Download to a temp file and check it end to end with the recovered file key: nothing changed yet.
  // Never past the room its disk has (the database shares it) nor past the size the cloud announced.
  let work: string;
  let limit: number;
  try {
    await mkdir(agent.paths.work, { recursive: true });
    const { room } = await usableSpace(agent.paths.work);
    if (expected !== undefined && expected > room)
      throw noSpace(`it is ${Math.ceil(expected / 1048576)} MB`, room);
    limit = Math.min(room, expected ?? room);
    work = await mkdtemp(join(agent.paths.work, `${TEMP_PREFIX}dr-recover-`));
  } catch (error) {
    res.body.destroy();
    throw error;
  }
  let keysInstalled = false;
  try {
    const downloaded = join(work, 'backup.bin');
    let received = 0;
    const hash = createHash('sha256');
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        received += chunk.length;
        if (received > limit) {
          done(
            received > (expected ?? Number.POSITIVE_INFINITY)
              ? new AppError(
                  'dependency_down',
                  `the DR cloud sent more than the ${expected} bytes it announced: nothing was changed; run the recovery again`,
                )
              : noSpace(`it is over ${Math.floor(limit / 1048576)} MB`, limit),
          );
          return;
        }
        hash.update(chunk);
        ctx.progress(received);
        done(null, chunk);
      },
    });
    await writeFileAtomic(downloaded, [res.body, counter], { signal: ctx.signal, mode: 0o600 }).catch(
      (error: unknown) => {
        // A connection lost (or stalled past the timeout) mid-answer ends it with Node's bare "aborted".
        if (
          ctx.signal.aborted ||
          res.body.complete ||
          (error as NodeJS.ErrnoException).code !== 'ECONNRESET'
        ) {
          throw error;
        }
        const of = expected === undefined ? '' : ` of ${expected}`;
        throw new AppError(
          'dependency_down',
          `the recovery download from the DR cloud was cut off after ${received}${of} bytes (the connection was lost or stalled): nothing was changed; run the recovery again`,
          { cause: error },
        );
      },
    );
    const size = (await stat(downloaded)).size;
    // Also without a Content-Length (the cloud streams): an answer that ended cleanly but short would
    // otherwise fail its check below as a damaged backup, as if the cloud copy were bad.
    if (expected !== undefined && size !== expected) {
      throw new AppError(
        'dependency_down',
        `the recovery download from the DR cloud was cut short: ${size} of ${expected} bytes: nothing was changed; run the recovery again`,
      );
    }
    ctx.phase('check', size);
    const key = fileKey;
    const { header, manifest } = await readBackup(downloaded, {
      keys: [],
      signal: ctx.signal,
      resolveFileKey: async () => Uint8Array.from(key),
      onProgress: (b) => ctx.progress(b),
    });
    // The header names its installation by tag (FORMAT.md "Version 2"); the manifest inside holds the id.
    if (header.core.installationTag !== installationTag(id) || manifest.installationId !== id) {
      throw new AppError('dependency_down', 'the recovered backup belongs to another installation');
    }
    // The recovered keys must open this backup before they replace ours: a keyring that does not
    // (bad escrow data, a wrong cloud) would leave this installation under an identity it cannot use.
    await checkKeyringOpensBackup(recovered, header.stanzas, key);
    const sha256 = hash.digest('hex');

    // 2. Recorded as unfinished first (durably): from the moment the keys below are ours, a push would
    // send this box's own data over the only good copy. Then the recovered keys become active.
    ctx.phase('keys');
    const record = await recordUnfinished(deps, id);
    await agent.keyring.importKeys(recovered);
    keysInstalled = true;
    await deps.state.update((s) => {
      // The cloud holds a slot for this id, so the id is enrolled with the recovered signing key.
      s.enrollment = {
        installationId: recovered.installationId,
        publicKeyX: recovered.signingKey.publicJwk.x,
        at: new Date().toISOString(),
      };
      delete s.upload;
    });
    // Not the installation id: it is the recovery credential, and logs are not the place for it.
    ctx.log.info('recovered keys installed');

    // 3. A local backup like any other (receiveUpload checks it again with the now-active keys).
    ctx.phase('store', size);
    let name = await storedEarlier(agent, record, sha256);
    if (name) {
      ctx.log.info('the recovered backup was stored by an earlier attempt: reused', { backup: name });
    } else {
      name = await agent.catalog.freeName(new Date(manifest.createdAt));
      const copy = createReadStream(downloaded);
      await receiveUpload(agent, name, copy, {
        declaredSize: size,
        signal: ctx.signal,
        onProgress: (b) => ctx.progress(b),
      }).catch(async (error: unknown) => {
        // Refused before reading a byte (no room, the name taken meanwhile), the file would stay open,
        // its disk space held after the work folder is removed, until the agent stops. Closed first.
        if (!copy.closed) await new Promise<void>((closed) => copy.once('close', () => closed()).destroy());
        throw error;
      });
      await deps.unfinished.write({ ...record, backup: name, sha256 });
    }
    await rm(work, { recursive: true, force: true });

    // 4. The safe restore; a safety backup only if there is something here worth keeping.
    const skipSafetyBackup = !(await hasGemSchema(agent.sql));
    // A fresh install may not have the folders' parent yet; the restore puts its staging copies beside them.
    for (const live of [agent.sources.scriptsDir, agent.sources.configDir]) {
      await mkdirDurable(dirname(live));
    }
    const restore = await restoreFromFile(agent, ctx, agent.catalog.pathOf(name), {
      filename: name,
      skipSafetyBackup,
      ...(deps.faults?.restore ? { faults: deps.faults.restore } : {}),
    });
    // The box now holds the recovered data under the recovered identity: pushes may go again. The slot
    // still holds the copy it came from (dr status and the cloud check say so until a push replaces it).
    await deps.state.update((s) => {
      s.recovered = { at: new Date().toISOString(), createdAt: manifest.createdAt, backup: name };
    });
    await deps.unfinished.clear();
    return {
      installationId: recovered.installationId,
      backup: name,
      backupCreatedAt: manifest.createdAt,
      restore,
    };
  } catch (error) {
    // From the keys step on, this box carries the recovered identity until the recovery is run again or
    // given up: its end says so, beside the step's own words (a restore's "nothing was changed").
    throw keysInstalled ? await stillUnfinished(deps, ctx, error) : error;
  } finally {
    fileKey.fill(0);
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * `error` of a recovery that stopped after installing the recovered keys, with the sentence of the
 * unfinished recovery that now holds this box added (same code; `cancelled` when it was cancelled);
 * unchanged if nothing holds it (the restore finished the recovery after all).
 */
async function stillUnfinished(deps: RecoverDeps, ctx: JobContext, error: unknown): Promise<unknown> {
  const held = await deps.unfinished.current(deps.agent.keyring).catch(() => null);
  if (!held) return error;
  const words = `this box now carries the recovered installation's keys and identity: ${held.message}`;
  if (ctx.signal.aborted) {
    const own =
      isAppError(error, 'cancelled') && error.message !== 'the job was cancelled' ? `${error.message}; ` : '';
    return new AppError('cancelled', `the recovery was cancelled after its keys step; ${own}${words}`, {
      cause: error,
    });
  }
  const { code, message } = describeError(error);
  return new AppError(isErrorCode(code) ? code : 'internal', `${message}; ${words}`, {
    cause: error,
    ...(isAppError(error) && error.details ? { details: error.details } : {}),
  });
}

/**
 * Records the recovery of `installationId` as unfinished, before its keys are installed. A retry keeps
 * what the first attempt recorded of this box's own identity (by then the recovered one is active)
 * and, for the same id, the backup it stored.
 */
async function recordUnfinished(
  deps: RecoverDeps,
  installationId: string,
): Promise<UnfinishedRecoveryRecord> {
  const { keyring } = deps.agent;
  const earlier = await deps.unfinished.read().catch(() => null);
  const ownKnown =
    earlier !== null &&
    (keyring.installationId === earlier.installationId ||
      keyring.installationId === earlier.previousInstallationId);
  const record: UnfinishedRecoveryRecord = {
    installationId,
    startedAt: new Date().toISOString(),
    previousInstallationId: ownKnown ? earlier.previousInstallationId : keyring.installationId,
    previousActiveKeyId: ownKnown ? earlier.previousActiveKeyId : keyring.activeKey.id,
    ...(earlier?.installationId === installationId && earlier.backup && earlier.sha256
      ? { backup: earlier.backup, sha256: earlier.sha256 }
      : {}),
  };
  await deps.unfinished.write(record);
  return record;
}

/** The local backup an earlier attempt stored, if it is still here with exactly the downloaded bytes. */
async function storedEarlier(
  agent: Agent,
  record: UnfinishedRecoveryRecord,
  sha256: string,
): Promise<string | undefined> {
  if (!record.backup || record.sha256 !== sha256 || !(await agent.catalog.exists(record.backup))) {
    return undefined;
  }
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(agent.catalog.pathOf(record.backup)))
    hash.update(chunk as Buffer);
  return hash.digest('hex') === sha256 ? record.backup : undefined;
}

/**
 * Gives up an unfinished recovery: this box goes back to its own identity and active key (the recovered
 * keys stay, retired, so the recovered backup stays readable), the enrollment and any upload of the
 * recovered id are forgotten, and the record is cleared. Its data was never replaced (or only partly:
 * a restore either completes or rolls back), so nothing else changes. False if nothing was unfinished;
 * refused (nothing changed) if the record is damaged. `beforeChange` is called just before the first
 * change (the CLI's check for a Ctrl-C: it throws to stop with nothing changed).
 */
export async function abandonRecovery(
  deps: Pick<RecoverDeps, 'agent' | 'state' | 'unfinished'>,
  beforeChange?: () => void,
): Promise<boolean> {
  const { keyring } = deps.agent;
  let record: UnfinishedRecoveryRecord | null;
  try {
    record = await deps.unfinished.read();
  } catch (error) {
    // A damaged record no longer says which identity was this box's own: cleared, it would leave the
    // recovered one active with nothing holding pushes back, whose next one would send this box's data
    // over that installation's only cloud copy. Refused; the record (and its hold) stay.
    if (!(error instanceof AppError)) throw error;
    throw new AppError(
      'unprocessable',
      `${error.message}; giving it up is refused, because the record no longer says which identity was this box's own: nothing was changed`,
    );
  }
  if (!record) return false;
  beforeChange?.();
  const file = keyring.toFile();
  if (
    file.installationId === record.installationId &&
    record.previousInstallationId !== file.installationId
  ) {
    const own = file.retiredIdentities.find((i) => i.installationId === record.previousInstallationId);
    if (!own || !file.masterKeys.some((k) => k.id === record.previousActiveKeyId)) {
      throw new AppError(
        'unprocessable',
        "this box's own keys are no longer in its keyring: finish the recovery (gem-backup dr recover --installation-id ID), or import this box's keys file",
      );
    }
    await keyring.replace({
      ...file,
      installationId: own.installationId,
      signingKey: own.signingKey,
      masterKeys: file.masterKeys.map((k) => ({
        ...k,
        status: k.id === record.previousActiveKeyId ? 'active' : 'retired',
      })),
      retiredIdentities: [
        ...file.retiredIdentities.filter((i) => i.installationId !== own.installationId),
        { installationId: file.installationId, signingKey: file.signingKey },
      ],
    });
    await deps.state.update((s) => {
      if (s.enrollment?.installationId === record.installationId) delete s.enrollment;
      if (s.upload?.installationId === record.installationId) delete s.upload;
    });
  }
  await deps.unfinished.clear();
  return true;
}
