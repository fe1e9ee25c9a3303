// One agent operation in its own process, so the benchmark can read its peak RSS: prints one JSON line.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { JWK } from 'jose';
import { openAgent } from '../agent/agent';
import { backupDeps, createBackup, verifyBackup } from '../agent/backup/create';
import { loadConfig } from '../agent/config';
import { DrClient } from '../agent/dr/client';
import { drServiceFor } from '../agent/dr/service';
import type { JobContext } from '../agent/jobs/runner';
import { createLogger, silentLogger } from '../agent/log';
import { uploadBackup } from '../agent/offsite/transfer';
import type { S3Options, SftpOptions, SmbOptions } from '../agent/providers';
import { createProvider } from '../agent/providers';
import { restoreFromFile, restoreSettled } from '../agent/restore/restore';
import { AGENT_VERSION } from '../agent/version';
import { AGENT_VERSION_HEADER, BACKUP_CREATED_AT_HEADER } from '../shared/api/cloud';
import { SIGNATURE_SCHEME, signRequest } from '../shared/signing';
import type { StorageProvider } from '../shared/storage/index';

/** What the benchmark asks of one child. */
export interface ChildRequest {
  op: 'idle' | 'backup' | 'verify' | 'restore' | 'upload' | 'dr-push' | 'dr-plain-put';
  /** Environment of the agent (DATABASE_URL, GEM_DATA_DIR, ...). */
  env: Record<string, string>;
  /**
   * For `verify`: one untimed verify of the same file first, so the timed one runs in an agent that
   * has already read a backup (its hashing worker started, its code compiled), as the running
   * service does after its first backup.
   */
  warm?: boolean;
  /** For `restore`: the agent whose catalog holds the backup opens with this DATABASE_URL instead. */
  provider?:
    | { kind: 'sftp'; options: SftpOptions }
    | { kind: 'smb'; options: SmbOptions }
    | { kind: 's3'; options: S3Options };
}

/** What one child reports. */
export interface ChildReport {
  ms: number;
  maxRssBytes: number;
  /** Bytes of the backup file the operation made or read. */
  bytes: number;
  backup: string;
  detail?: unknown;
  /** Phase name and its start, ms after the operation began. */
  phases: Array<[string, number]>;
  /** Steps the operation logged with their duration (the restore's): name and ms. */
  steps: Array<[string, number]>;
}

/** A job context that records when each phase started (ms since the operation began). */
function timingContext(phases: Array<[string, number]>, steps: Array<[string, number]> = []): JobContext {
  const controller = new AbortController();
  const started = performance.now();
  // The steps an operation logs with their duration ({step, ms}: the restore's): kept, the rest dropped.
  const log = createLogger({
    write: (line) => {
      const { step, ms } = JSON.parse(line) as { step?: unknown; ms?: unknown };
      if (typeof step === 'string' && typeof ms === 'number') steps.push([step, ms]);
    },
  });
  return {
    signal: controller.signal,
    log,
    phase: (name) => {
      phases.push([name, Math.round(performance.now() - started)]);
    },
    // A phase's own steps (a restore's safety backup) are timed as part of the phase.
    step: () => {},
    progress: () => {},
    notice: () => {},
    target: () => {},
    throwIfCancelled: () => {},
  };
}

type OpenedAgent = Awaited<ReturnType<typeof openAgent>>;

function drClientOf(agent: OpenedAgent, env: Record<string, string>): DrClient {
  return new DrClient({
    baseUrl: env['GEM_DR_URL']!,
    identity: () => ({ installationId: agent.keyring.installationId, signingKey: agent.keyring.signingKey }),
    enrollmentToken: env['GEM_DR_ENROLLMENT_TOKEN'],
  });
}

/**
 * The DR protocol's minimum for the same bytes to the same Worker: one sha256 pass (the signature
 * covers it), the signed `PUT /v1/dr/backup`, the file streamed in 1 MiB reads. No escrow header, no
 * state file, no job: what any client of this API must do at least.
 */
async function plainSignedPut(
  agent: OpenedAgent,
  env: Record<string, string>,
  name: string,
  createdAt: string,
): Promise<unknown> {
  const path = agent.catalog.pathOf(name);
  const hash = createHash('sha256');
  let length = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    length += (chunk as Buffer).length;
  }
  const sha256 = hash.digest('hex');
  const token = await signRequest({
    installationId: agent.keyring.installationId,
    method: 'PUT',
    path: '/v1/dr/backup',
    bodySha256: sha256,
    bodyLength: length,
    privateJwk: agent.keyring.signingKey.privateJwk as JWK,
    backupCreatedAt: createdAt,
  });
  const res = await fetch(`${env['GEM_DR_URL']}/v1/dr/backup`, {
    method: 'PUT',
    headers: {
      authorization: `${SIGNATURE_SCHEME} ${token}`,
      'content-length': String(length),
      [BACKUP_CREATED_AT_HEADER]: createdAt,
      [AGENT_VERSION_HEADER]: AGENT_VERSION,
    },
    body: Readable.toWeb(createReadStream(path, { highWaterMark: 1 << 20 })) as ReadableStream,
    duplex: 'half',
  } as RequestInit);
  const text = await res.text();
  if (res.status !== 201) throw new Error(`plain PUT answered ${res.status}: ${text.slice(0, 200)}`);
  return { sha256, length };
}

async function main(): Promise<void> {
  const request = JSON.parse(process.argv[2]!) as ChildRequest;
  const agent = await openAgent(loadConfig(request.env), silentLogger);
  const phases: Array<[string, number]> = [];
  const steps: Array<[string, number]> = [];
  const ctx = timingContext(phases, steps);
  const deps = backupDeps(agent);
  if (request.op === 'backup') {
    // One backup at a time on disk: the previous one goes before the clock starts.
    for (const old of await agent.catalog.list()) await agent.catalog.delete(old.filename);
  }
  const latest = (await agent.catalog.list())[0];
  if (request.op !== 'backup' && request.op !== 'idle' && !latest)
    throw new Error('no backup in the catalog: run the backup first');
  if (request.op === 'dr-plain-put') {
    // Untimed, as the agent's own push does it first: this installation is known to the cloud.
    await drClientOf(agent, request.env).enroll();
  }
  if (request.op === 'verify' && request.warm) await verifyBackup(agent, timingContext([]), latest!.filename);
  const started = performance.now();
  let detail: unknown;
  let restoredAt = 0;
  let name = latest?.filename ?? '';
  if (request.op === 'idle') {
    // The agent opened and doing nothing: the floor every operation's RSS starts from.
  } else if (request.op === 'backup') {
    name = (await createBackup(deps, ctx, { kind: 'manual', label: 'benchmark' })).filename;
  } else if (request.op === 'verify') {
    detail = await verifyBackup(agent, ctx, name).then((r) => ({ members: r.members }));
  } else if (request.op === 'restore') {
    const result = await restoreFromFile(agent, ctx, agent.catalog.pathOf(name), {
      filename: name,
      skipSafetyBackup: true,
    });
    // Timed to the job's report, as a person sees it; the drop of the replaced database follows it.
    restoredAt = performance.now();
    await restoreSettled(agent.config.dataDir);
    detail = {
      tables: result.tables,
      rows: result.rows,
      cleanupAfterReportMs: Math.round(performance.now() - restoredAt),
    };
  } else if (request.op === 'upload') {
    const p = request.provider!;
    // As the agent builds it: the destination's SDK is loaded on first use.
    const provider: StorageProvider = createProvider(p.kind, p.options as never);
    try {
      detail = await uploadBackup(agent, provider, name, { retry: { attempts: 1 } });
    } finally {
      await provider.close?.();
    }
  } else if (request.op === 'dr-plain-put') {
    detail = await plainSignedPut(agent, request.env, name, latest!.createdAt);
  } else {
    const dr = drServiceFor(agent);
    const job = await agent.jobs.waitFor((await dr.startPush()).id);
    if (job.error) throw new Error(`DR push failed: ${job.error.code}: ${job.error.message}`);
    detail = job.result;
  }
  const ms = (request.op === 'restore' ? restoredAt : performance.now()) - started;
  const bytes = name ? (await agent.catalog.info(name)).size : 0;
  const report: ChildReport = {
    ms,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
    bytes,
    backup: name,
    detail,
    phases,
    steps,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  await agent.close();
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
