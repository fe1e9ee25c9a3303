// Upload limits: a body that cannot fit beside the database, or is not a backup, is refused early and leaves nothing.
import { createReadStream } from 'node:fs';
import { readdir, stat, statfs } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { receiveUpload, uploadReserve } from '../../agent/backup/upload';
import { isAppError } from '../../agent/errors';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let good: string;

const CHUNK = 64 * 1024;

/** Every entry of the backups folder, temp files included. */
async function backupFiles(): Promise<string[]> {
  return (await readdir(t.agent.paths.backups)).sort();
}

/** A body of `total` bytes made on demand; `pulled` says how much the server has asked for so far. */
function recordingBody(total: number, fill: number) {
  const state = { pulled: 0, cancelled: false };
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        const n = Math.min(CHUNK, total - state.pulled);
        if (n <= 0) return controller.close();
        state.pulled += n;
        controller.enqueue(new Uint8Array(n).fill(fill));
      },
      cancel() {
        state.cancelled = true;
      },
    },
    // Nothing is read ahead of the server's own asking.
    { highWaterMark: 0 },
  );
  return { stream, state };
}

const upload = (name: string, body: ReadableStream<Uint8Array>, headers: Record<string, string> = {}) =>
  t.request(`/api/v1/backups/upload?filename=${encodeURIComponent(name)}`, {
    method: 'POST',
    body,
    headers,
    duplex: 'half',
  } as RequestInit);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  good = (job.result as { backup: { filename: string } }).backup.filename;
}, 60_000);
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('upload limits', () => {
  it('refuses with 507 no_space, before reading the body, an upload declaring more than the free space', async () => {
    const before = await backupFiles();
    const s = await statfs(t.agent.paths.backups);
    const declared = Number(s.bavail) * Number(s.bsize) + 1;
    // Only 1 MiB is really there behind the declaration: the test never fills the disk, even when it fails.
    const body = recordingBody(1024 * 1024, 0);
    const res = await upload('gem-backup-2020-02-01-000000.tar.gz', body.stream, {
      'content-length': String(declared),
    });
    const pulledAtAnswer = body.state.pulled;
    expect(res.status).toBe(507);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('no_space');
    expect(pulledAtAnswer).toBeLessThanOrEqual(CHUNK);
    expect(await backupFiles()).toEqual(before);
  });

  it('refuses a 20 MB body that is not a backup from its first bytes (422 not_a_backup), leaving nothing', async () => {
    const before = await backupFiles();
    const total = 20 * 1024 * 1024;
    const body = recordingBody(total, 0x50);
    const res = await upload('gem-backup-2020-02-02-000000.tar.gz', body.stream, {
      'content-length': String(total),
    });
    const pulledAtAnswer = body.state.pulled;
    expect(res.status).toBe(422);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('not_a_backup');
    // Refused after the first chunks, not after the whole body was on disk.
    expect(pulledAtAnswer).toBeLessThan(2 * 1024 * 1024);
    expect(await backupFiles()).toEqual(before);
  });

  it('stops a body without Content-Length once it passes the free space minus the reserve, leaving nothing', async () => {
    const before = await backupFiles();
    const path = t.agent.catalog.pathOf(good);
    const size = (await stat(path)).size;
    // A disk of 10 GB (reserve 500 MB) with room for only half of this backup beside the reserve.
    const total = 10 * 1024 ** 3;
    const reserve = uploadReserve(total);
    expect(reserve).toBe(Math.floor(total * 0.05));
    const room = Math.floor(size / 2);
    let pulled = 0;
    // No Content-Length: the body arrives in chunks, counted as they are asked for.
    const source = Readable.from(
      (async function* () {
        for await (const chunk of createReadStream(path, { highWaterMark: 16 * 1024 })) {
          pulled += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
      })(),
    );
    const error = await receiveUpload(t.agent, 'gem-backup-2020-02-03-000000.tar.gz', source, {
      space: async () => ({ free: reserve + room, total }),
    }).catch((e: unknown) => e);
    expect(isAppError(error, 'no_space'), String(error)).toBe(true);
    expect(pulled).toBeLessThan(size);
    expect(await backupFiles()).toEqual(before);
  });

  it('still accepts a real backup that fits', async () => {
    const bytes = createReadStream(t.agent.catalog.pathOf(good));
    const size = (await stat(t.agent.catalog.pathOf(good))).size;
    const result = await receiveUpload(t.agent, 'gem-backup-2020-02-04-000000.tar.gz', bytes, {
      declaredSize: size,
    });
    expect(result).toMatchObject({ size, verified: true });
    expect(await backupFiles()).toContain('gem-backup-2020-02-04-000000.tar.gz');
  });
});
