// Helpers of the health, alerts, metrics and verification tests: a webhook receiver on loopback, API calls, backups.
import { open } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'vitest';
import type { Job } from '../../agent/jobs/runner';
import type { TestAgent } from '../services/agent';
import type { SshdService } from '../services/sshd';

export interface ReceivedHook {
  headers: IncomingHttpHeaders;
  body: string;
  json: Record<string, unknown>;
}

/** A real HTTP server on 127.0.0.1 that records every POST it receives. */
export async function startWebhookReceiver(): Promise<{
  url: string;
  received: ReceivedHook[];
  close(): Promise<void>;
}> {
  const received: ReceivedHook[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const body = Buffer.concat(parts).toString('utf8');
      received.push({ headers: req.headers, body, json: JSON.parse(body) as Record<string, unknown> });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hooks/gem`,
    received,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** Calls the API; returns status and parsed body. */
export async function call(
  t: TestAgent,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  const res = await t.request(path.startsWith('/metrics') ? path : `/api/v1${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON (metrics): the text itself
  }
  return { status: res.status, body: parsed };
}

/** Makes a manual backup through the API and returns its file name. */
export async function backupNow(t: TestAgent): Promise<string> {
  const res = await call(t, 'POST', '/backups');
  expect(res.status).toBe(202);
  const job: Job = await t.agent.jobs.waitFor(res.body.jobId);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return (job.result as { backup: { filename: string } }).backup.filename;
}

/**
 * Turns 64 bytes in the middle of backup `name` over (the disk damaged it) and runs Verify now, which
 * fails on it: returns that verification's job.
 */
export async function damageAndVerify(t: TestAgent, name: string): Promise<Job> {
  const file = await open(t.agent.catalog.pathOf(name), 'r+');
  try {
    const { size } = await file.stat();
    await file.write(Buffer.alloc(64, 0xa5), 0, 64, Math.floor(size / 2));
  } finally {
    await file.close();
  }
  const run = await call(t, 'POST', '/health/verification/run');
  expect(run.status).toBe(202);
  const job = await t.agent.jobs.waitFor(run.body.jobId);
  expect(job.state).toBe('failed');
  return job;
}

/** The settings section of the test sshd as an SFTP destination, backups in `remotePath` under its home. */
export function sftpSection(sshd: SshdService, remotePath = 'gem-backups') {
  return {
    enabled: true,
    host: sshd.host,
    port: sshd.port,
    username: sshd.passwordUser.username,
    remotePath,
    auth: { password: sshd.passwordUser.password },
    autoUpload: false,
  };
}

/** Downloads the keys once, so the keys area is healthy and only what a test changes moves. */
export async function downloadKeys(t: TestAgent): Promise<string> {
  const res = await t.request('/api/v1/keys/export');
  expect(res.status).toBe(200);
  return res.text();
}
