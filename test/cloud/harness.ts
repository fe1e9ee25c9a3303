// Test harness for the DR Worker: builds the bundle, runs it under Miniflare on a free port, signs requests.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import type { Miniflare } from 'miniflare';
import { expect } from 'vitest';
import { buildWorker, startLocalWorker } from '../../cloud/local';
import type { UploadRecord } from '../../cloud/state/ledger';
import { BACKUP_CREATED_AT_HEADER } from '../../shared/api/cloud';
import { signRequest } from '../../shared/signing';
import { buildOnce } from '../services/run-builds';

export const ENROLLMENT_TOKEN = 'test-enrollment-token';

/** A running Worker: its URL, its R2 bucket (to inspect) and how to stop it. */
export interface CloudUnderTest {
  url: string;
  mf: Miniflare;
  /** where Miniflare persists the Worker's R2 objects and Durable Object storage */
  stateDir: string;
  listSlotObjects(installationId: string): Promise<string[]>;
  dispose(): Promise<void>;
}

/**
 * Starts the Worker under Miniflare on port 0, built exactly as `npm run cloud:build` does (once per
 * run: test/services/run-builds.ts), with its own state.
 */
export async function startCloud(bindings: Record<string, string> = {}): Promise<CloudUnderTest> {
  const bundle = await buildOnce('dr-worker', buildWorker, tmpdir());
  const dir = await mkdtemp(join(tmpdir(), 'gem-cloud-test-'));
  const started = await startLocalWorker({
    outDir: bundle.dir,
    stateDir: dir,
    bindings: { ENROLLMENT_TOKEN, ESCROW_PRIVATE_KEYS: '[]', MAX_SLOT_BYTES: '200000000', ...bindings },
  });
  const mf = started.mf;
  const url = started.url.toString().replace(/\/$/, '');
  return {
    url,
    mf,
    stateDir: dir,
    async listSlotObjects(installationId) {
      const bucket = (await mf.getR2Bucket('SLOTS')) as unknown as R2Bucket;
      const hash = createHash('sha256').update(installationId).digest('hex');
      const listed = await bucket.list({ prefix: `slots/${hash}/` });
      return listed.objects.map((o) => o.key);
    },
    async dispose() {
      await mf.dispose();
      await rm(dir, { recursive: true, force: true });
      await bundle.remove();
    },
  };
}

/** An upload's record as the installation's Durable Object holds it (its storage key and upload id). */
export async function storedUpload(
  cloud: CloudUnderTest,
  installationId: string,
  uploadId: string,
): Promise<UploadRecord | null> {
  const ns = (await cloud.mf.getDurableObjectNamespace('INSTALLATIONS')) as unknown as DurableObjectNamespace;
  const hash = createHash('sha256').update(installationId).digest('hex');
  const stub = ns.get(ns.idFromName(hash)) as unknown as {
    upload(id: string): Promise<UploadRecord | null>;
  };
  return stub.upload(uploadId);
}

/** Whether R2 still takes parts for a multipart upload (false once it was aborted or completed). */
export async function multipartIsOpen(cloud: CloudUnderTest, upload: UploadRecord): Promise<boolean> {
  const bucket = (await cloud.mf.getR2Bucket('SLOTS')) as unknown as R2Bucket;
  try {
    await bucket
      .resumeMultipartUpload(upload.objectKey, upload.storeUploadId)
      .uploadPart(10_000, new Uint8Array(8));
    return true;
  } catch {
    return false;
  }
}

/** An installation with a real Ed25519 key pair. */
export interface TestInstallation {
  installationId: string;
  privateJwk: JWK;
  publicJwk: JWK;
}

export async function newInstallation(): Promise<TestInstallation> {
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  return {
    installationId: createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 32),
    privateJwk: await exportJWK(privateKey),
    publicJwk: await exportJWK(publicKey),
  };
}

/** The answer of one HTTP exchange, body read whole (tests only read small or hashed bodies). */
interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  // biome-ignore lint/suspicious/noExplicitAny: tests read answers field by field and assert on them
  json<T = any>(): T;
}

/** One request over node:http; `body` may be an async iterable so large uploads stream. */
export function httpRequest(
  url: string,
  opts: {
    method: string;
    headers?: Record<string, string>;
    body?: Uint8Array | AsyncIterable<Uint8Array>;
    signal?: AbortSignal;
    /** hash the response body instead of keeping it */
    hashBody?: boolean;
  },
): Promise<HttpAnswer & { sha256?: string; size: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      // A fresh connection each time: a kept-alive socket the server has just closed would fail the next request.
      { method: opts.method, headers: opts.headers, signal: opts.signal, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        const hash = createHash('sha256');
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (opts.hashBody) hash.update(c);
          else chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body,
            size,
            sha256: opts.hashBody ? hash.digest('hex') : undefined,
            json: () => JSON.parse(body.toString('utf8')),
          });
        });
      },
    );
    req.on('error', reject);
    const body = opts.body;
    if (body === undefined) req.end();
    else if (body instanceof Uint8Array) req.end(body);
    else {
      (async () => {
        for await (const chunk of body) {
          if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
        }
        req.end();
      })().catch((err) => req.destroy(err));
    }
  });
}

/** Enrolls an installation with the test enrollment token. */
export function enroll(cloud: { url: string }, inst: TestInstallation, publicJwk = inst.publicJwk) {
  const body = Buffer.from(JSON.stringify({ installationId: inst.installationId, publicKey: publicJwk }));
  return httpRequest(`${cloud.url}/v1/installations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ENROLLMENT_TOKEN}`, 'content-type': 'application/json' },
    body,
  });
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The headers of a signed request: what the agent's DR client sends. */
export async function signedHeaders(
  inst: TestInstallation,
  method: string,
  path: string,
  body: { sha256: string; length: number },
  extra: { backupCreatedAt?: string; now?: Date; jti?: string } = {},
): Promise<Record<string, string>> {
  const token = await signRequest({
    installationId: inst.installationId,
    method,
    path,
    bodySha256: body.sha256,
    bodyLength: body.length,
    privateJwk: inst.privateJwk,
    ...extra,
  });
  const headers: Record<string, string> = { authorization: `GEM-Signature ${token}` };
  if (body.length > 0) headers['content-length'] = String(body.length);
  if (extra.backupCreatedAt) headers[BACKUP_CREATED_AT_HEADER] = extra.backupCreatedAt;
  return headers;
}

/** Uploads a small backup in one signed PUT. */
export async function putBackup(
  cloud: { url: string },
  inst: TestInstallation,
  bytes: Uint8Array,
  createdAt: string,
): Promise<HttpAnswer> {
  const headers = await signedHeaders(
    inst,
    'PUT',
    '/v1/dr/backup',
    { sha256: sha256(bytes), length: bytes.length },
    { backupCreatedAt: createdAt },
  );
  return httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: bytes });
}

/** A signed request without a body (GET, HEAD, DELETE, complete). */
export async function signedEmpty(
  cloud: { url: string },
  inst: TestInstallation,
  method: string,
  path: string,
) {
  const headers = await signedHeaders(inst, method, path, { sha256: sha256(new Uint8Array(0)), length: 0 });
  return httpRequest(`${cloud.url}${path}`, { method, headers, hashBody: method === 'GET' });
}

/** Deterministic pseudo-random bytes, `total` long, in 1 MiB pieces: never held whole. */
export async function* generatedBytes(total: number, seed: number, from = 0): AsyncGenerator<Uint8Array> {
  const block = createHash('sha512').update(`seed-${seed}`).digest();
  const piece = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < piece.length; i += block.length) block.copy(piece, i);
  let offset = from;
  const end = from + total;
  while (offset < end) {
    const n = Math.min(piece.length, end - offset);
    const out = Buffer.from(piece.subarray(0, n));
    out.writeUInt32BE(offset >>> 0, 0);
    yield out;
    offset += n;
  }
}

/** sha256 of generatedBytes(total, seed, from). */
export async function generatedSha256(total: number, seed: number, from = 0): Promise<string> {
  const hash = createHash('sha256');
  for await (const piece of generatedBytes(total, seed, from)) hash.update(piece);
  return hash.digest('hex');
}

/** Far more than any limit involved; the client never gets near it when the Worker stops reading early. */
const CAP = 48 * 1024 * 1024;

/**
 * Sends a body piece by piece until the answer arrives or CAP bytes are sent, whichever is first. At
 * CAP a chunked body is ended (a Worker that reads it whole answers then); a body with a declared
 * Content-Length is given up. An answer to a request whose body was never ended proves the Worker
 * answered without reading the body to its end.
 */
function sendUntilAnswered(
  cloud: { url: string },
  method: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; ended: boolean; sent: number; reset?: boolean }> {
  return new Promise((resolve, reject) => {
    let ended = false;
    let sent = 0;
    let answered: (() => void) | undefined;
    const answer = new Promise<void>((r) => {
      answered = r;
    });
    let isAnswered = false;
    const req = http.request(`${cloud.url}${path}`, { method, headers, agent: false }, (res) => {
      isAnswered = true;
      answered?.();
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), ended, sent });
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (isAnswered) return; // the Worker dropping the unread rest after its answer: expected
      // The Worker closed with unread bytes on the wire, and the reset overtook its answer.
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        resolve({ status: 0, body: '', ended, sent, reset: true });
      } else reject(err);
    });
    // Bytes the Worker never reads make its socket close with a reset, and a reset arriving first
    // makes the kernel drop the answer unread. So the first bytes go slowly, giving a refusal time
    // to come while little or nothing is unread: the headers alone, then 16 KiB at a time up to
    // 512 KiB. Only then does the body go at full speed to CAP (a Worker that reads it all).
    const quietly = (ms: number) => Promise.race([answer, new Promise((r) => setTimeout(r, ms))]);
    const slowPiece = Buffer.alloc(16 * 1024, 0x7b);
    const fastPiece = Buffer.alloc(256 * 1024, 0x7b);
    void (async () => {
      req.flushHeaders();
      await quietly(250);
      while (!isAnswered && sent < CAP) {
        const slow = sent < 512 * 1024;
        const piece = slow ? slowPiece : fastPiece;
        const flushed = req.write(piece);
        sent += piece.length;
        if (!flushed) await Promise.race([new Promise((r) => req.once('drain', r)), answer]);
        if (slow) await quietly(50);
      }
      if (isAnswered) return;
      ended = true;
      if (headers['content-length'] === undefined) req.end();
      else {
        req.destroy();
        resolve({ status: 0, body: '', ended, sent });
      }
    })().catch(() => {});
  });
}

/**
 * Asks up to five times. Every attempt must end before its body was sent whole (the proof that the
 * Worker did not read it to the end); a closed socket can overtake the answer now and then, so at
 * least one attempt must also have read the expected status.
 */
export async function refusedUnread(
  cloud: { url: string },
  method: string,
  path: string,
  headers: () => Promise<Record<string, string>>,
  status: number,
): Promise<{ status: number; body: string }> {
  for (let attempt = 1; attempt <= 5; attempt++) {
    const res = await sendUntilAnswered(cloud, method, path, await headers());
    expect(res.ended).toBe(false);
    expect(res.sent).toBeLessThan(CAP);
    if (!res.reset) {
      expect(res.status).toBe(status);
      return res;
    }
  }
  throw new Error(`five resets and no ${status} answer from ${path}`);
}

/**
 * Waits, when the wall clock is in the last 10 s of a minute, for the next minute: the recovery limit
 * counts in fixed one-minute windows, and a few attempts that straddle two windows would count in both.
 */
export async function awayFromMinuteEnd(): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000);
  if (left < 10_000) await new Promise((resolve) => setTimeout(resolve, left + 100));
}
