/** The archive's checksums on a worker thread: gzip CRC-32 and every member's sha256, while this thread decrypts. */
import { Worker } from 'node:worker_threads';

/** Archive bytes travel to the worker in batches of this size (few messages; memcpy into them is cheap). */
const BATCH_SIZE = 1 << 20;
/** Batches in circulation at most: bounds memory; the worker outpaces the reader, so they rarely run out. */
const BATCHES = 8;
/**
 * Batches a verify may use while a fresh worker has not answered yet: it boots for 60-75 ms, and
 * with only BATCHES the reader stopped after 8 MiB and waited for it. The extra ones are dropped as
 * they come back, so this bounds only the start (up to 24 MiB more, only in an operation that asks).
 */
export const BOOT_BATCHES = 32;

/**
 * The worker. It sees the whole archive (the gunzip output) in order, in batches: it keeps the
 * CRC-32 of the current gzip member and answers a `crc` message with it (then starts again), and
 * hashes the byte ranges it is told are members. A batch is handed back (transferred, for reuse)
 * once every byte of it is known to be in a member or not: ranges arrive as the tar headers are
 * parsed, which may be after the bytes. Plain JavaScript evaluated as is, so it runs the same from
 * the TypeScript sources and from the bundle.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { crc32 } = require('node:zlib');
let crc, queue, ranges, known, pos, received, hash;
const reset = () => { crc = 0; queue = []; ranges = []; known = 0; pos = 0; received = 0; hash = undefined; };
reset();
const work = () => {
  while (queue.length > 0) {
    const b = queue[0];
    const stop = Math.min(b.start + b.length, known);
    while (pos < stop) {
      const r = ranges[0];
      if (!r || r.start >= stop) { pos = stop; break; }
      if (pos < r.start) pos = r.start;
      const to = Math.min(r.end, stop);
      if (!hash) hash = createHash('sha256');
      if (to > pos) hash.update(new Uint8Array(b.buf, pos - b.start, to - pos));
      pos = to;
      if (pos === r.end) {
        parentPort.postMessage({ id: r.id, hex: hash.digest('hex') });
        hash = undefined;
        ranges.shift();
      }
    }
    if (pos < b.start + b.length) return;
    queue.shift();
    parentPort.postMessage({ batch: b.buf }, [b.buf]);
  }
};
const emptyRanges = () => {
  // Ranges of no bytes (empty members) are done at once, wherever the data stands.
  while (ranges.length > 0 && ranges[0].start === ranges[0].end && ranges[0].start <= received) {
    const r = ranges.shift();
    parentPort.postMessage({ id: r.id, hex: createHash('sha256').digest('hex') });
  }
};
parentPort.on('message', (m) => {
  if (m.batch !== undefined) {
    const bytes = new Uint8Array(m.batch, 0, m.length);
    crc = crc32(bytes, crc);
    queue.push({ buf: m.batch, start: received, length: m.length });
    received += m.length;
  } else if (m.crc !== undefined) {
    parentPort.postMessage({ crcId: m.crc, value: crc });
    crc = 0;
  } else if (m.range !== undefined) {
    ranges.push({ id: m.range, start: m.start, end: m.end });
    known = m.end;
  } else if (m.known !== undefined) {
    known = Math.max(known, m.known);
  } else if (m.reset) {
    reset();
    return;
  }
  emptyRanges();
  work();
  emptyRanges();
});
`;

interface Reply {
  batch?: ArrayBuffer;
  id?: number;
  hex?: string;
  crcId?: number;
  value?: number;
}

type Waiter<T> = { resolve: (value: T) => void; reject: (e: Error) => void };

/** Request ids, unique in the process: a reused worker's late replies can never match a new archive's requests. */
let nextId = 0;

/** Workers that have answered once: booted. */
const running = new WeakSet<Worker>();
/** Batches allowed before a prepared worker answers, as its prepareArchiveHasher call asked. */
const bootBatchesOf = new WeakMap<Worker, number>();

/** A started worker waiting for its next archive (one per process; unref'd, so it never keeps it alive). */
let idleWorker: Worker | undefined;

/**
 * Starts the hashing worker ahead of need (it takes 60-75 ms to boot): call it first thing in an
 * operation that reads a backup. `bootBatches` (at most BOOT_BATCHES) lets the next archive's reader
 * run that many MiB ahead until the worker answers; memory-bound operations keep the default.
 */
export function prepareArchiveHasher(bootBatches = BATCHES): void {
  if (!idleWorker) idleWorker = startWorker();
  bootBatchesOf.set(idleWorker, Math.min(Math.max(bootBatches, BATCHES), BOOT_BATCHES));
}

function startWorker(): Worker {
  const worker = new Worker(WORKER_SOURCE, { eval: true });
  worker.unref();
  // An idle worker that dies is simply forgotten; a busy one reports through its ArchiveHasher.
  worker.on('error', () => {});
  worker.on('exit', () => {
    if (idleWorker === worker) idleWorker = undefined;
  });
  return worker;
}

/**
 * Checksums of an archive, computed on a worker thread. write() hands it every byte of the archive
 * in order (copied into batches that are transferred, not copied again); member() says which range
 * of those bytes is a member and promises its sha256; checkCrc() promises the CRC-32 of the bytes
 * since the previous check. close() gives the worker back for the next archive.
 */
export class ArchiveHasher {
  private readonly worker: Worker;
  private readonly free: ArrayBuffer[] = [];
  private allocated = 0;
  /** The worker has answered (it runs): from then on, BATCHES bound the batches. */
  private answered: boolean;
  /** Batches allowed until it answers. */
  private readonly bootBatches: number;
  private current: Uint8Array | undefined;
  private filled = 0;
  /** Pieces written while no batch was free: views, copied as batches come back. */
  private readonly backlog: Uint8Array[] = [];
  private drainWaiters: Array<Waiter<void>> = [];
  private failure: Error | undefined;
  private readonly pending = new Map<number, Waiter<string>>();
  private readonly crcPending = new Map<number, Waiter<number>>();
  private readonly onMessage = (reply: Reply) => this.onReply(reply);
  private readonly onError = (error: Error) => this.fail(error);
  private readonly onExit = () => this.fail(new Error('the hashing worker stopped'));

  constructor() {
    this.worker = idleWorker ?? startWorker();
    idleWorker = undefined;
    this.answered = running.has(this.worker);
    this.bootBatches = bootBatchesOf.get(this.worker) ?? BATCHES;
    bootBatchesOf.delete(this.worker);
    this.worker.ref();
    this.worker.on('message', this.onMessage);
    this.worker.on('error', this.onError);
    this.worker.on('exit', this.onExit);
  }

  /** Adds archive bytes. The bytes must not change until drained() settles. */
  write(bytes: Uint8Array): void {
    if (this.failure) return;
    if (this.backlog.length > 0) this.backlog.push(bytes);
    else this.copy(bytes);
  }

  /** Settles once every byte written is copied (it waits only when the worker fell 8 MiB behind). */
  drained(): Promise<void> | undefined {
    if (this.failure) return Promise.reject(this.failure);
    if (this.backlog.length === 0) return undefined;
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  /** Bytes [start, end) of the archive are a member: its sha256, as lower-case hex. Ranges come in order. */
  member(start: number, end: number): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    const id = nextId++;
    const digest = new Promise<string>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.worker.postMessage({ range: id, start, end });
    return digest;
  }

  /** No member starts before `offset` other than those already named (lets the worker move on). */
  known(offset: number): void {
    if (!this.failure) this.worker.postMessage({ known: offset });
  }

  /** The CRC-32 of the bytes written since the previous call (a gzip member's). */
  crc(): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const id = nextId++;
    const value = new Promise<number>((resolve, reject) => this.crcPending.set(id, { resolve, reject }));
    if (this.backlog.length > 0) {
      // Only once the backlog is in batches: the check covers exactly the bytes written before it.
      this.drained()?.then(
        () => this.sendCrc(id),
        () => {},
      );
    } else this.sendCrc(id);
    return value;
  }

  /**
   * Gives the worker back for the next archive (or ends it after a failure). Pending digests fail.
   * A worker still busy with bytes is ended too, so a new archive never sees this one's state.
   */
  async close(): Promise<void> {
    const clean = !this.failure && this.pending.size === 0 && this.crcPending.size === 0;
    this.fail(new Error('the archive hasher was closed'));
    this.worker.off('message', this.onMessage);
    this.worker.off('error', this.onError);
    this.worker.off('exit', this.onExit);
    if (clean && !idleWorker) {
      this.worker.postMessage({ reset: true });
      this.worker.unref();
      idleWorker = this.worker;
      return;
    }
    await this.worker.terminate();
  }

  private sendCrc(id: number): void {
    this.send();
    this.worker.postMessage({ crc: id });
  }

  /** Copies into batches; false when they ran out (the rest then waits at the front of the backlog). */
  private copy(bytes: Uint8Array): boolean {
    let from = 0;
    while (from < bytes.length) {
      if (!this.current) {
        const limit = this.answered ? BATCHES : this.bootBatches;
        const batch = this.free.pop() ?? (this.allocated < limit ? this.allocate() : undefined);
        if (!batch) {
          this.backlog.unshift(bytes.subarray(from));
          return false;
        }
        this.current = new Uint8Array(batch);
        this.filled = 0;
      }
      const n = Math.min(bytes.length - from, BATCH_SIZE - this.filled);
      this.current.set(bytes.subarray(from, from + n), this.filled);
      from += n;
      this.filled += n;
      if (this.filled === BATCH_SIZE) this.send();
    }
    return true;
  }

  private allocate(): ArrayBuffer {
    this.allocated++;
    return new ArrayBuffer(BATCH_SIZE);
  }

  /** Hands the current batch (if it holds anything) to the worker. */
  private send(): void {
    if (!this.current || this.filled === 0) return;
    const batch = this.current.buffer as ArrayBuffer;
    const length = this.filled;
    this.current = undefined;
    this.worker.postMessage({ batch, length }, [batch]);
  }

  private onReply(reply: Reply): void {
    if (!this.answered) {
      this.answered = true;
      running.add(this.worker);
    }
    if (reply.batch) {
      // Beyond BATCHES (lent while the worker booted), a batch is let go.
      if (this.allocated > BATCHES) this.allocated--;
      else this.free.push(reply.batch);
      this.copyBacklog();
    }
    if (reply.id !== undefined) {
      this.pending.get(reply.id)?.resolve(reply.hex!);
      this.pending.delete(reply.id);
    }
    if (reply.crcId !== undefined) {
      this.crcPending.get(reply.crcId)?.resolve(reply.value!);
      this.crcPending.delete(reply.crcId);
    }
  }

  private copyBacklog(): void {
    while (this.backlog.length > 0 && !this.failure) {
      if (!this.copy(this.backlog.shift()!)) return;
    }
    if (this.backlog.length === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w.resolve();
    }
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
    for (const { reject } of this.crcPending.values()) reject(error);
    this.crcPending.clear();
    for (const { reject } of this.drainWaiters) reject(error);
    this.drainWaiters = [];
    this.backlog.length = 0;
  }
}
