/** sha256 of archive members on a worker thread, so hashing runs on the other core while this one decrypts. */
import { Worker } from 'node:worker_threads';

/** Member bytes travel to the worker in batches of this size (few messages; memcpy into them is cheap). */
const BATCH_SIZE = 1 << 20;
/** Batches in circulation at most: bounds memory; the worker outpaces the reader, so they rarely run out. */
const BATCHES = 8;

/**
 * The worker: hashes each batch it is handed, returns the batch (transferred back, for reuse) and,
 * when the batch ends a member, that member's digest. Plain JavaScript evaluated as is, so it runs
 * the same from the TypeScript sources and from the bundle.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
let hash = createHash('sha256');
parentPort.on('message', (m) => {
  hash.update(new Uint8Array(m.batch, 0, m.length));
  if (m.digest === undefined) {
    parentPort.postMessage({ batch: m.batch }, [m.batch]);
    return;
  }
  parentPort.postMessage({ batch: m.batch, id: m.digest, hex: hash.digest('hex') }, [m.batch]);
  hash = createHash('sha256');
});
`;

interface Reply {
  batch: ArrayBuffer;
  id?: number;
  hex?: string;
}

/**
 * Hashes a sequence of members, one after another: update() with a member's bytes, then digest()
 * for its sha256, and the next member starts. Bytes are copied into batches that are transferred
 * (not copied) to a worker thread and back; close() ends the worker.
 */
export class MemberHasher {
  private readonly worker: Worker;
  private readonly free: ArrayBuffer[] = [];
  private allocated = 0;
  private current: Uint8Array | undefined;
  private filled = 0;
  private nextId = 0;
  private failure: Error | undefined;
  private readonly digests = new Map<
    number,
    { resolve: (hex: string) => void; reject: (e: Error) => void }
  >();
  private batchWaiter: { resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor() {
    this.worker = new Worker(WORKER_SOURCE, { eval: true });
    this.worker.on('message', (reply: Reply) => this.onReply(reply));
    this.worker.on('error', (error) => this.fail(error));
    this.worker.on('exit', () => this.fail(new Error('the hashing worker stopped')));
  }

  /** Adds bytes of the current member; returns a promise only when it must wait for a batch. */
  update(bytes: Uint8Array): Promise<void> | undefined {
    let from = 0;
    while (from < bytes.length) {
      if (this.failure) return Promise.reject(this.failure);
      if (!this.current) {
        const batch = this.free.pop() ?? (this.allocated < BATCHES ? this.allocate() : undefined);
        if (!batch) return this.waitForBatch().then(() => this.update(bytes.subarray(from)));
        this.current = new Uint8Array(batch);
        this.filled = 0;
      }
      const n = Math.min(bytes.length - from, BATCH_SIZE - this.filled);
      this.current.set(bytes.subarray(from, from + n), this.filled);
      from += n;
      this.filled += n;
      if (this.filled === BATCH_SIZE) this.send();
    }
    return undefined;
  }

  /** Ends the current member: its sha256 as lower-case hex. */
  digest(): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const result = new Promise<string>((resolve, reject) => this.digests.set(id, { resolve, reject }));
    this.send(id);
    return result;
  }

  /** Stops the worker (pending digests fail). */
  async close(): Promise<void> {
    this.fail(new Error('the member hasher was closed'));
    await this.worker.terminate();
  }

  private allocate(): ArrayBuffer {
    this.allocated++;
    return new ArrayBuffer(BATCH_SIZE);
  }

  /** Hands the current batch (maybe empty, for a digest) to the worker. */
  private send(digest?: number): void {
    const batch = this.current?.buffer ?? new ArrayBuffer(0);
    const length = this.current ? this.filled : 0;
    this.current = undefined;
    this.worker.postMessage({ batch, length, digest }, [batch as ArrayBuffer]);
  }

  private waitForBatch(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.batchWaiter = { resolve, reject };
    });
  }

  private onReply(reply: Reply): void {
    if (reply.batch.byteLength === BATCH_SIZE) this.free.push(reply.batch);
    if (reply.id !== undefined) {
      this.digests.get(reply.id)?.resolve(reply.hex!);
      this.digests.delete(reply.id);
    }
    const waiter = this.batchWaiter;
    this.batchWaiter = undefined;
    waiter?.resolve();
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    for (const { reject } of this.digests.values()) reject(error);
    this.digests.clear();
    this.batchWaiter?.reject(error);
    this.batchWaiter = undefined;
  }
}
