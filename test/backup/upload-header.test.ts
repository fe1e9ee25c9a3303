// An upload's first bytes are read for the backup header as they arrive (receiveUpload): a header that
// trickles in a byte at a time is found and every byte is kept as sent; bytes that are no backup end
// the upload on the chunk that shows it, with the envelope's reason, and leave nothing behind.
import { readdir, readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { receiveUpload } from '../../agent/backup/upload';
import { tryParseHeader } from '../../shared/envelope';
import { flipBit } from '../envelope/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let good: Buffer;
let headerLength: number;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  const filename = (job.result as { backup: { filename: string } }).backup.filename;
  good = await readFile(t.agent.catalog.pathOf(filename));
  headerLength = tryParseHeader(good)!.length;
}, 60_000);
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

/** Every entry of the backups folder, temp files included. */
async function backupFiles(): Promise<string[]> {
  return (await readdir(t.agent.paths.backups)).sort();
}

/** `bytes` as a body: its first `trickle` bytes one at a time, then 64 KiB chunks; `state.pulled` counts the chunks read. */
function body(bytes: Uint8Array, trickle: number) {
  const state = { pulled: 0 };
  const stream = Readable.from(
    (function* () {
      for (let i = 0; i < bytes.length; ) {
        const size = i < trickle ? 1 : 64 * 1024;
        state.pulled++;
        yield Buffer.from(bytes.subarray(i, i + size));
        i += size;
      }
    })(),
  );
  return { stream, state };
}

describe('the header of an upload', () => {
  it('is found when it arrives a byte at a time, and every byte is kept as sent', async () => {
    const name = 'gem-backup-2020-03-01-000000.tar.gz';
    const sent = body(good, headerLength + 10);
    const progress: number[] = [];
    const result = await receiveUpload(t.agent, name, sent.stream, {
      declaredSize: good.length,
      onProgress: (bytes) => progress.push(bytes),
    });
    expect(result).toMatchObject({ filename: name, size: good.length, verified: true });
    expect((await readFile(t.agent.catalog.pathOf(name))).equals(good)).toBe(true);
    expect(progress).toHaveLength(sent.state.pulled);
    expect(progress.at(-1)).toBe(good.length);
  });

  it('ends an upload that is no backup on the chunk that shows it, leaving nothing', async () => {
    const before = await backupFiles();
    const zip = Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(200_000, 0x7a)]);
    // Each with the byte that shows it is no backup: a signature byte, the core length, the core itself.
    for (const [bytes, shownAt, message] of [
      [zip, 1, 'not a GEM backup file: it does not start with the GEM backup signature'],
      [flipBit(good, 3), 4, 'not a GEM backup file: it does not start with the GEM backup signature'],
      [flipBit(good, 9, 7), 12, 'not a GEM backup file: bad core length'],
      [flipBit(good, 12, 1), headerLength, 'not a GEM backup file: the header core is not UTF-8 JSON'],
    ] as const) {
      const sent = body(bytes, headerLength + 10);
      const error = await receiveUpload(t.agent, 'gem-backup-2020-03-02-000000.tar.gz', sent.stream, {
        declaredSize: bytes.length,
      }).catch((e: unknown) => e);
      expect(error).toMatchObject({ name: 'AppError', code: 'not_a_backup', message });
      // Stopped there (the streams read a few chunks ahead), not after the rest of the body.
      expect(sent.state.pulled).toBeGreaterThanOrEqual(shownAt);
      expect(sent.state.pulled).toBeLessThan(shownAt + 20);
      expect(await backupFiles()).toEqual(before);
    }
  });
});
