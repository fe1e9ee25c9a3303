/** The scheduled verification: the newest local backup in full, then each offsite destination's newest copy, then the Cloud DR slot's metadata. */
import { Readable } from 'node:stream';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { stanzaKeyIds } from '../../shared/envelope';
import type { StorageProvider, StoredObject } from '../../shared/storage/index';
import { isBackupName } from '../../shared/storage/names';
import type { Agent } from '../agent';
import { type BackupCatalog, datedInFuture } from '../backup/catalog';
import { verifyBackup } from '../backup/create';
import { readBackup } from '../backup/reader';
import { drServiceFor } from '../dr/service';
import { AppError, describeError } from '../errors';
import type { Job, JobContext } from '../jobs/runner';
import { destinationLabel, OFFSITE_KINDS, type OffsiteKind } from '../offsite/destinations';
import { offsiteServiceFor } from '../offsite/service';
import { createdAtFromName, notABackup, readRemoteHeader } from '../offsite/transfer';
import { headSlot, slotDifferences } from './cloud-slot';
import { HEADERS_READ_PER_DESTINATION } from './key-check';
import { currentTargetResults, type TargetResult, verificationStateFor } from './state';

/** Each target's result of this run; the job fails (after recording all of them) if any one failed. */
interface VerificationSummary {
  ok: boolean;
  results: TargetResult[];
}

async function verifyLocal(agent: Agent, ctx: JobContext): Promise<TargetResult> {
  const at = new Date().toISOString();
  const list = await agent.catalog.list();
  // The newest real backup of this installation: one dated after the clock (made while it was ahead)
  // is not the newest, nor is one another installation made (copied here, made with keys we do not hold),
  // nor a DR push's temporary copy (kind 'dr': deleted once it is in the cloud, not a backup kept here).
  const ours = list.filter((b) => b.kind !== 'dr' && agent.keyring.owns(b.installationTag, b.keyIds));
  const newest = ours.find((b) => !datedInFuture(b, Date.now())) ?? ours[0];
  if (!newest) {
    const skipped = list.length
      ? 'there is no local backup of this installation yet'
      : 'there is no local backup yet';
    return { target: 'local', at, ok: true, check: 'none', skipped };
  }
  // Named as the job's target, as a verify job names its backup: no prune (a backup made meanwhile) nor
  // DELETE takes it while it is read.
  ctx.target(newest.filename);
  try {
    const r = await verifyBackup(agent, ctx, newest.filename);
    return {
      target: 'local',
      at,
      ok: true,
      check: 'full',
      filename: newest.filename,
      details: { members: r.members },
    };
  } catch (error) {
    if (ctx.signal.aborted) throw error;
    return {
      target: 'local',
      at,
      ok: false,
      check: 'full',
      filename: newest.filename,
      error: describeError(error),
    };
  }
}

/**
 * The destination's newest copy of this installation: the newest by name, not one dated after the clock
 * (made while it was ahead) unless only such are there, passing over another controller's copies in the
 * same folder (their header names an installation or keys we do not hold; retention and sync pass over
 * them too), at most HEADERS_READ_PER_DESTINATION headers read. A copy whose header cannot be read is
 * taken: its check then says what is wrong with it.
 */
async function newestOfOurs(
  agent: Agent,
  provider: StorageProvider,
  objects: StoredObject[],
  signal: AbortSignal,
): Promise<StoredObject | undefined> {
  const future = (o: StoredObject) =>
    datedInFuture({ createdAt: createdAtFromName(o.name) ?? '' }, Date.now());
  const sorted = [...objects].sort((a, b) => b.name.localeCompare(a.name));
  const candidates = [...sorted.filter((o) => !future(o)), ...sorted.filter(future)];
  for (const object of candidates.slice(0, HEADERS_READ_PER_DESTINATION)) {
    const header = await readRemoteHeader(provider, object.name, signal).catch((error: unknown) => {
      if (notABackup(error)) return undefined;
      throw error;
    });
    if (!header || agent.keyring.owns(header.core.installationTag, stanzaKeyIds(header.stanzas)))
      return object;
  }
  return undefined;
}

/** Streams a destination's newest copy through readBackup: every chunk decrypted and every checksum checked, no temp copy. */
async function verifyOffsite(agent: Agent, ctx: JobContext, kind: OffsiteKind): Promise<TargetResult> {
  const at = new Date().toISOString();
  const destination = destinationLabel(kind, agent.settings.get().offsite[kind]);
  let filename: string | undefined;
  try {
    const provider = offsiteServiceFor(agent).provider(kind);
    const skipped = (reason: string): TargetResult => ({
      target: kind,
      destination,
      at,
      ok: true,
      check: 'none',
      skipped: reason,
    });
    try {
      const objects = (await provider.list({ signal: ctx.signal })).filter((o) => isBackupName(o.name));
      if (objects.length === 0) return skipped('the destination holds no backup yet');
      const newest = await newestOfOurs(agent, provider, objects, ctx.signal);
      if (!newest) {
        return skipped(
          objects.length > HEADERS_READ_PER_DESTINATION
            ? `none of the newest ${HEADERS_READ_PER_DESTINATION} backups there is of this installation`
            : 'none of the backups there is of this installation',
        );
      }
      filename = newest.name;
      ctx.phase(`verify ${kind}`, newest.size);
      const stream = await provider.get(newest.name, { signal: ctx.signal });
      const { manifest } = await readBackup(Readable.fromWeb(stream as NodeReadableStream<Uint8Array>), {
        keys: agent.keyring.masterKeys,
        signal: ctx.signal,
        onProgress: (bytes) => ctx.progress(bytes),
      });
      return {
        target: kind,
        destination,
        at,
        ok: true,
        check: 'full',
        filename,
        details: { size: newest.size, members: manifest.members.length },
      };
    } finally {
      await provider.close?.().catch(() => {});
    }
  } catch (error) {
    if (ctx.signal.aborted) throw error;
    return {
      target: kind,
      destination,
      at,
      ok: false,
      check: 'full',
      ...(filename ? { filename } : {}),
      error: describeError(error),
    };
  }
}

/** What the last successful push (or the recovery) recorded about the copy the slot should hold. */
type PushedCopy = { at: string; size?: number; sha256?: string; createdAt?: string; backup?: string };

/** The slot's metadata and how it differs from `pushed` (empty when they agree). */
async function compareSlot(agent: Agent, url: string, pushed: PushedCopy, signal: AbortSignal) {
  const slot = await headSlot(agent, url, undefined, signal);
  // Records from before the push kept createdAt name the backup: its catalog record knows when it was made.
  const local =
    !pushed.createdAt && pushed.backup
      ? await agent.catalog.info(pushed.backup).catch(() => undefined)
      : undefined;
  const problems = slotDifferences(slot, {
    size: pushed.size,
    sha256: pushed.sha256,
    createdAt: pushed.createdAt ?? local?.createdAt,
  });
  return { slot, problems };
}

/** Resolves once job `id` has ended; throws `cancelled` once `ctx`'s job is cancelled. */
async function jobEnded(agent: Agent, ctx: JobContext, id: string): Promise<void> {
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<void>((resolve) => {
    onAbort = resolve;
    ctx.signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await Promise.race([agent.jobs.waitFor(id), aborted]);
  } finally {
    if (onAbort) ctx.signal.removeEventListener('abort', onAbort);
  }
  ctx.throwIfCancelled();
}

/** The slot's size, created-at and sha256 against the last successful push's record (each when recorded), or the recovered copy's created-at. */
async function verifyCloud(agent: Agent, ctx: JobContext): Promise<TargetResult> {
  const at = new Date().toISOString();
  const dr = drServiceFor(agent);
  const status = await dr.status();
  if (!status.enabled || !status.url) {
    return { target: 'cloud', at, ok: true, check: 'none', skipped: status.reason ?? 'Cloud DR is off' };
  }
  // After a finished recovery with no push since, the slot holds the copy recovered: its created-at is known.
  let pushed: PushedCopy | null = status.recovered ?? status.lastSuccess;
  if (!pushed) return { target: 'cloud', at, ok: true, check: 'none', skipped: 'nothing was pushed yet' };
  ctx.phase('verify cloud');
  try {
    let { slot, problems } = await compareSlot(agent, status.url, pushed, ctx.signal);
    if (problems.length) {
      // A push may have replaced the slot since its record was read, or be replacing it now (its bytes
      // in the slot, its success not recorded yet): no damage. Once it has ended, the slot is compared
      // again with the copy recorded then, if that is another.
      const now = await dr.status();
      if (now.running && now.jobId) await jobEnded(agent, ctx, now.jobId);
      const after = await dr.status();
      const latest: PushedCopy | null = after.recovered ?? after.lastSuccess;
      if (after.url && latest && latest.at !== pushed.at) {
        pushed = latest;
        ({ slot, problems } = await compareSlot(agent, after.url, pushed, ctx.signal));
      }
    }
    const details = {
      slot,
      pushed: {
        at: pushed.at,
        size: pushed.size,
        sha256: pushed.sha256,
        createdAt: pushed.createdAt,
        backup: pushed.backup,
      },
    };
    if (problems.length) {
      return {
        target: 'cloud',
        at,
        ok: false,
        check: 'metadata',
        ...(pushed.backup ? { filename: pushed.backup } : {}),
        error: { code: 'integrity', message: problems.join('; ') },
        details,
      };
    }
    return {
      target: 'cloud',
      at,
      ok: true,
      check: 'metadata',
      ...(pushed.backup ? { filename: pushed.backup } : {}),
      details,
    };
  } catch (error) {
    if (ctx.signal.aborted) throw error;
    return { target: 'cloud', at, ok: false, check: 'metadata', error: describeError(error) };
  }
}

/**
 * Records an offsite target's result on the local record of the backup it checked, beside the other
 * targets' results as the records file holds them (read under its lock: a verification in the CLI
 * recording another target's result meanwhile keeps it).
 */
export function recordRemoteVerify(
  catalog: BackupCatalog,
  filename: string,
  result: TargetResult,
): Promise<void> {
  return catalog.updateRecord(filename, (record) => ({
    remoteVerify: {
      ...record?.remoteVerify,
      [result.target]: {
        verifiedAt: result.at,
        verifyResult: result.ok ? 'ok' : 'failed',
        ...(result.error ? { verifyError: result.error.message } : {}),
      },
    },
  }));
}

/**
 * Runs one verification over every target, one at a time (so a slow destination never competes with
 * another for bandwidth), recording each result as it comes: in verification-state.json, and on the
 * local catalog record of the same backup (`remoteVerify`), so the list shows it.
 */
export async function runVerification(
  agent: Agent,
  ctx: JobContext,
  jobId = 'standalone',
): Promise<VerificationSummary> {
  const store = verificationStateFor(agent);
  const startedAt = new Date().toISOString();
  const results: TargetResult[] = [];
  const record = async (result: TargetResult) => {
    results.push(result);
    await store.update((s) => {
      // A skip keeps the last real verdict of the same place when it was ok; one of another place (moved
      // since) goes, and so does a failure: it was of a copy this run found no more (deleted, Cloud DR off).
      const kept = s.targets[result.target];
      if (!result.skipped || !kept?.ok || kept.destination !== result.destination)
        s.targets[result.target] = result;
    });
    if (
      result.target !== 'local' &&
      result.filename &&
      !result.skipped &&
      (await agent.catalog.exists(result.filename))
    ) {
      await recordRemoteVerify(agent.catalog, result.filename, result);
    }
  };
  ctx.phase('verify local');
  await record(await verifyLocal(agent, ctx));
  const offsite = agent.settings.get().offsite;
  for (const kind of OFFSITE_KINDS) {
    ctx.throwIfCancelled();
    if (offsite[kind].enabled) await record(await verifyOffsite(agent, ctx, kind));
  }
  ctx.throwIfCancelled();
  await record(await verifyCloud(agent, ctx));
  const ok = results.every((r) => r.ok);
  await store.update((s) => {
    s.lastRun = { jobId, startedAt, endedAt: new Date().toISOString(), ok, results };
    // Results of copies that are gone (a destination turned off or moved, Cloud DR opted out) are dropped.
    s.targets = currentTargetResults(s, agent.settings.get());
  });
  if (!ok) {
    const failed = results.filter((r) => !r.ok);
    throw new AppError(
      'corrupt_backup',
      `verification failed: ${failed.map((r) => `${r.target}${r.filename ? ` (${r.filename})` : ''}: ${r.error?.message}`).join('; ')}`,
      { details: { results } },
    );
  }
  return { ok, results };
}

/** Starts the verification as a job (kind 'verification'); it only reads, so it may run beside others. */
export function startVerification(agent: Agent): Promise<Job> {
  // The work begins before start() has answered with the job: it takes its id from that answer.
  const job: Promise<Job> = agent.jobs.start(
    'verification',
    async (ctx) => runVerification(agent, ctx, (await job).id),
    { mutating: false },
  );
  return job;
}
