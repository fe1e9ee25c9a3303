// Per-installation state for the self-hosted Node entry: one JSON document per installation in the bucket.
import type { S3Client } from '@aws-sdk/client-s3';
import type { SlotStore } from '../store/slot-store';
import { abortDropped, InstallationLedger, type InstallationStateApi, type LedgerStorage } from './ledger';
import { type UpdateOptions, updateJsonObject } from './s3-conditional';

/**
 * The ledger over `state/<installation hash>.json`. Each call reads the document with its ETag, runs
 * the ledger on it and writes it back only if it is still that version (a conditional write); a call
 * that lost the race to another process re-runs on the newer document. So several processes may
 * serve one bucket. Calls for one installation within a process are also queued (a lock, not state):
 * it only saves them racing each other. Expired request ids and idle uploads are swept at the start
 * of each call instead of by an alarm.
 */
export class S3InstallationStates {
  private readonly queues = new Map<string, Promise<unknown>>();

  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly store: SlotStore,
    private readonly uploadIdleMs = 24 * 3600_000,
    private readonly retry: Omit<UpdateOptions, 'what'> = {},
  ) {}

  /** The state of one installation, with the same methods as the Durable Object. */
  installation(hash: string): InstallationStateApi {
    const call =
      <A extends unknown[], R>(fn: (ledger: InstallationLedger, ...args: A) => Promise<R>) =>
      (...args: A) =>
        this.serialized(hash, () => this.withLedger(hash, (ledger) => fn(ledger, ...args)));
    return {
      enroll: call((l, key) => l.enroll(key)),
      publicKey: call((l) => l.publicKey()),
      admitRequest: call((l, jti: string, exp: number) => l.admitRequest(jti, exp)),
      slot: call((l) => l.slot()),
      beginPut: call((l, key: string, atMs: number) => l.beginPut(key, atMs)),
      commitSlot: call((l, next, opts?: { put?: boolean }) => l.commitSlot(next, opts)),
      claimOrphans: call((l, keys: string[], sinceMs: number) => l.claimOrphans(keys, sinceMs)),
      revokePuts: call((l) => l.revokePuts()),
      clearSlot: call((l, key: string) => l.clearSlot(key)),
      createUpload: call((l, upload) => l.createUpload(upload)),
      upload: call((l, id: string) => l.upload(id)),
      recordPart: call((l, id: string, n: number, part) => l.recordPart(id, n, part)),
      forgetPart: call((l, id: string, n: number) => l.forgetPart(id, n)),
      claimUpload: call((l, id: string) => l.claimUpload(id)),
      releaseUpload: call((l, id: string) => l.releaseUpload(id)),
      finishUpload: call((l, id: string, next) => l.finishUpload(id, next)),
      takeUpload: call((l, id: string) => l.takeUpload(id)),
      takeUploads: call((l) => l.takeUploads()),
    } as InstallationStateApi;
  }

  private serialized<T>(hash: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(hash) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const tail = run.catch(() => {});
    this.queues.set(hash, tail);
    tail.then(() => {
      if (this.queues.get(hash) === tail) this.queues.delete(hash);
    });
    return run;
  }

  private async withLedger<T>(hash: string, fn: (ledger: InstallationLedger) => Promise<T>): Promise<T> {
    // Each try runs on a fresh copy of the document as read; only the try whose write won counts.
    const { result, abandoned, stalePuts } = await updateJsonObject(
      this.s3,
      this.bucket,
      `state/${hash}.json`,
      async (current) => {
        const doc = new Map<string, unknown>(Object.entries(current ?? {}));
        let changed = false;
        const storage: LedgerStorage = {
          get: async <V>(k: string) => structuredClone(doc.get(k)) as V | undefined,
          put: async (k, v) => {
            doc.set(k, structuredClone(v));
            changed = true;
          },
          delete: async (k) => {
            changed = doc.delete(k) || changed;
          },
          list: async <V>(prefix: string) =>
            new Map(
              [...doc].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k, structuredClone(v)]) as [
                string,
                V,
              ][],
            ),
          wakeBy: async () => {},
        };
        const ledger = new InstallationLedger(storage, this.uploadIdleMs);
        const swept = await ledger.sweep(Date.now());
        const value = { result: await fn(ledger), ...swept };
        return changed ? { value, next: Object.fromEntries(doc) } : { value };
      },
      { ...this.retry, what: 'updating an installation ledger' },
    );
    // The write that forgot them won: no other process saw them still there after it, so each is
    // cleaned up by exactly one caller (a lost race re-ran the sweep on the newer document instead).
    await abortDropped(this.store, abandoned, (upload) =>
      this.withLedger(hash, (ledger) => ledger.createUpload(upload)),
    );
    for (const key of stalePuts) await this.store.delete(key).catch(() => {});
    return structuredClone(result);
  }
}
