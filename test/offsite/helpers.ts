// Offsite test helpers: a test agent with the offsite routes, backups on demand, job waiting.
import { randomBytes } from 'node:crypto';
import { expect } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import type { Job } from '../../agent/jobs/runner';
import { type OffsiteServiceOptions, offsiteServiceFor } from '../../agent/offsite/index';
import {
  generateFileKey,
  type MasterKey,
  newCore,
  sealStream,
  wrapForMasterKey,
} from '../../shared/envelope';
import { startTestAgent, type TestAgent } from '../services/agent';
import type { TestPostgres } from '../services/postgres';
import type { S3Service } from '../services/s3';

/** Short retries and timeouts, so a down destination fails in seconds, not minutes. */
export const FAST: OffsiteServiceOptions = {
  retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 200 },
  stallTimeoutMs: 3000,
  providerOverrides: { sftp: { timeoutMs: 2000 }, smb: { timeoutSeconds: 5 } },
};

/** A test agent with the offsite routes mounted and the fast offsite options. */
export async function startOffsiteAgent(
  pg: TestPostgres,
  options: OffsiteServiceOptions = FAST,
): Promise<TestAgent> {
  const t = await startTestAgent(pg, { modules: [offsiteModule] });
  offsiteServiceFor(t.agent, options);
  return t;
}

/** POSTs JSON (or nothing) and returns status and parsed body. */
export async function call(
  t: TestAgent,
  method: string,
  path: string,
  body?: unknown,
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers, checked by each test's expectations
): Promise<{ status: number; body: any }> {
  const res = await t.request(`/api/v1${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** Starts a job through the API (expects 202) and waits for it to end. */
export async function runJob(t: TestAgent, method: string, path: string, body?: unknown): Promise<Job> {
  const res = await call(t, method, path, body);
  expect(res.status, JSON.stringify(res.body)).toBe(202);
  return t.agent.jobs.waitFor(res.body.jobId);
}

/** Makes a manual backup through the API; returns the finished job. */
export async function backupNow(t: TestAgent): Promise<Job> {
  const job = await runJob(t, 'POST', '/backups');
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return job;
}

export function filenameOf(job: Job): string {
  return (job.result as { backup: { filename: string } }).backup.filename;
}

/** The settings section of the test s3rver as an S3 destination (turned on, no auto-upload), with `overrides`. */
export function s3Section(s3: S3Service, overrides: Record<string, unknown> = {}) {
  return {
    enabled: true,
    provider: 'other' as const,
    endpoint: s3.endpoint,
    region: s3.region,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
    autoUpload: false,
    ...overrides,
  };
}

/** The installation foreignBackup's backups are of. */
export const OTHER_INSTALLATION = randomBytes(16).toString('hex');

/**
 * A backup of another installation (OTHER_INSTALLATION unless named), sealed with a master key we do not
 * hold unless given one, of `payloadBytes` random bytes (20 000 unless given).
 */
export async function foreignBackup(
  createdAt: string,
  installationId = OTHER_INSTALLATION,
  payloadBytes = 20_000,
  key: MasterKey = { id: `mk-${randomBytes(8).toString('hex')}`, key: randomBytes(32) },
): Promise<Buffer> {
  const fileKey = generateFileKey();
  const core = newCore({
    installationId,
    createdAt,
    meta: { kind: 'scheduled' },
  });
  const sealed = sealStream(new Blob([randomBytes(payloadBytes)]).stream() as ReadableStream<Uint8Array>, {
    core,
    stanzas: [await wrapForMasterKey(fileKey, key)],
    fileKey,
  });
  const chunks: Uint8Array[] = [];
  for await (const c of sealed as unknown as AsyncIterable<Uint8Array>) chunks.push(c);
  return Buffer.concat(chunks);
}
