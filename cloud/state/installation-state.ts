// The per-installation Durable Object: the ledger over DO storage, swept by an alarm.
import { DurableObject } from 'cloudflare:workers';
import type { JWK } from 'jose';
import { R2SlotStore } from '../store/r2';
import type { WorkerEnv } from '../worker-env';
import {
  abortDropped,
  type CommitOutcome,
  type EnrollOutcome,
  InstallationLedger,
  type InstallationStateApi,
  type LedgerStorage,
  type SlotRecord,
  type UploadRecord,
} from './ledger';

/**
 * One instance per installation (named by the hash of its id). Each method is a few storage calls
 * with no other I/O, so the DO's input gates serialize them: two uploads finishing at once are
 * committed one after the other, and the older one cannot overwrite the newer.
 */
export class InstallationState extends DurableObject<WorkerEnv> implements InstallationStateApi {
  private readonly ledger: InstallationLedger;

  constructor(ctx: DurableObjectState, env: WorkerEnv) {
    super(ctx, env);
    const storage = ctx.storage;
    const adapter: LedgerStorage = {
      get: (key) => storage.get(key),
      put: (key, value) => storage.put(key, value),
      delete: (key) => storage.delete(key),
      list: (prefix) => storage.list({ prefix }),
      async wakeBy(atMs) {
        const current = await storage.getAlarm();
        if (current === null || current > atMs) await storage.setAlarm(atMs);
      },
    };
    this.ledger = new InstallationLedger(adapter, uploadIdleMs(env));
  }

  enroll(publicKey: JWK): Promise<EnrollOutcome> {
    return this.ledger.enroll(publicKey);
  }
  publicKey(): Promise<JWK | null> {
    return this.ledger.publicKey();
  }
  admitRequest(jti: string, expiresAtMs: number): Promise<boolean> {
    return this.ledger.admitRequest(jti, expiresAtMs);
  }
  slot(): Promise<SlotRecord | null> {
    return this.ledger.slot();
  }
  beginPut(objectKey: string, atMs: number): Promise<void> {
    return this.ledger.beginPut(objectKey, atMs);
  }
  commitSlot(next: SlotRecord, opts?: { put?: boolean }): Promise<CommitOutcome> {
    return this.ledger.commitSlot(next, opts);
  }
  claimOrphans(keys: string[], sinceMs: number): Promise<string[]> {
    return this.ledger.claimOrphans(keys, sinceMs);
  }
  revokePuts(): Promise<string[]> {
    return this.ledger.revokePuts();
  }
  clearSlot(objectKey: string): Promise<boolean> {
    return this.ledger.clearSlot(objectKey);
  }
  createUpload(upload: UploadRecord): Promise<void> {
    return this.ledger.createUpload(upload);
  }
  upload(uploadId: string): Promise<UploadRecord | null> {
    return this.ledger.upload(uploadId);
  }
  recordPart(
    uploadId: string,
    n: number,
    part: { size: number; etag: string },
  ): Promise<UploadRecord | null> {
    return this.ledger.recordPart(uploadId, n, part);
  }
  forgetPart(uploadId: string, n: number): Promise<UploadRecord | null> {
    return this.ledger.forgetPart(uploadId, n);
  }
  claimUpload(uploadId: string): Promise<UploadRecord | null> {
    return this.ledger.claimUpload(uploadId);
  }
  releaseUpload(uploadId: string): Promise<boolean> {
    return this.ledger.releaseUpload(uploadId);
  }
  finishUpload(uploadId: string, next: SlotRecord): Promise<CommitOutcome | null> {
    return this.ledger.finishUpload(uploadId, next);
  }
  takeUpload(uploadId: string): Promise<UploadRecord | null> {
    return this.ledger.takeUpload(uploadId);
  }
  takeUploads(): Promise<UploadRecord[]> {
    return this.ledger.takeUploads();
  }

  /**
   * Forgets expired request ids, aborts uploads idle for longer than the limit (24 h by default; one
   * whose abort fails stays for the next sweep) and deletes the objects of puts whose commit never came
   * within it.
   */
  async alarm(): Promise<void> {
    const { abandoned, stalePuts, nextAtMs } = await this.ledger.sweep(Date.now());
    // Set first: an upload recorded again after a failed abort wakes the alarm no later than its turn.
    if (nextAtMs !== null) await this.ctx.storage.setAlarm(nextAtMs);
    const store = new R2SlotStore(this.env.SLOTS);
    await abortDropped(store, abandoned, (upload) => this.ledger.createUpload(upload));
    for (const key of stalePuts) await store.delete(key).catch(() => {});
  }
}

function uploadIdleMs(env: WorkerEnv): number {
  const seconds = Number(env.UPLOAD_IDLE_SECONDS ?? 86400);
  return (Number.isFinite(seconds) && seconds > 0 ? seconds : 86400) * 1000;
}
