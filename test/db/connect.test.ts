// A connection reset just as a session opens (a restore's swap ends every session of the live
// database) is an error for the query that was waiting, never an unhandled rejection.
import { createServer, type Server, Socket } from 'node:net';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  openSql,
  RECONNECT_DELAY_CAP_SECONDS,
  reconnectDelaySeconds,
  reserveConnection,
} from '../../agent/db/connect';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let proxy: Server;
let proxyUrl: string;

/**
 * A TCP proxy to the cluster that resets the client's socket right after passing on the server's
 * first ReadyForQuery ('Z'): the moment a new session is ready and the client sends its first query.
 */
function resetAtFirstReady(port: number): Promise<Server> {
  const server = createServer((client) => {
    const upstream = new Socket();
    upstream.connect(port, '127.0.0.1');
    client.pipe(upstream);
    let pending = Buffer.alloc(0);
    upstream.on('data', (data: Buffer) => {
      pending = Buffer.concat([pending, data]);
      let at = 0;
      while (pending.length - at >= 5) {
        const type = String.fromCharCode(pending[at] ?? 0);
        const end = at + 1 + pending.readUInt32BE(at + 1);
        if (end > pending.length) break;
        if (type === 'Z') {
          client.write(pending.subarray(0, end), () => {
            setTimeout(() => {
              client.resetAndDestroy();
              upstream.destroy();
            }, 20);
          });
          upstream.removeAllListeners('data');
          return;
        }
        at = end;
      }
      client.write(pending.subarray(0, at));
      pending = pending.subarray(at);
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Runs `fn` and returns the unhandled rejections seen during it and 300 ms after. */
async function unhandledDuring(fn: () => Promise<unknown>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const listeners = process.listeners('unhandledRejection');
  process.removeAllListeners('unhandledRejection');
  const onRejection = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', onRejection);
  try {
    await fn().catch(() => {});
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    process.off('unhandledRejection', onRejection);
    for (const listener of listeners) process.on('unhandledRejection', listener);
  }
  return seen;
}

beforeAll(async () => {
  pg = await startPostgres();
  const url = new URL(await pg.createDatabase());
  proxy = await resetAtFirstReady(Number(url.port));
  const address = proxy.address();
  if (address === null || typeof address === 'string') throw new Error('the proxy has no port');
  url.port = String(address.port);
  proxyUrl = url.toString();
});

afterAll(async () => {
  await new Promise((r) => proxy?.close(r));
  await pg?.stop();
});

describe('openSql', () => {
  it('rejects the waiting query, and nothing else, when the socket is reset as the session opens', async () => {
    const sql = openSql(proxyUrl);
    let queryError: unknown;
    const unhandled = await unhandledDuring(async () => {
      await sql`select 1`.catch((error: unknown) => {
        queryError = error;
      });
    });
    await sql.end({ timeout: 1 }).catch(() => {});
    expect(queryError).toBeInstanceOf(Error);
    expect(unhandled).toEqual([]);
  });

  it('(the proxy reproduces the fault: postgres.js with its default type fetch leaks a rejection)', async () => {
    const sql = postgres(proxyUrl, { max: 1, onnotice: () => {}, connect_timeout: 10 });
    const unhandled = await unhandledDuring(async () => {
      await sql`select 1`.catch(() => {});
    });
    await sql.end({ timeout: 1 }).catch(() => {});
    expect(unhandled.length).toBeGreaterThan(0);
    expect(String((unhandled[0] as { query?: string }).query)).toContain('pg_type');
  });
});

describe('the pool after failed connects', () => {
  it("waits at most 2 s before it tries again, not postgres.js's 20 s, so it answers soon after an outage", async () => {
    const sql = openSql(await pg.createDatabase());
    try {
      expect(sql.options.backoff).toBe(reconnectDelaySeconds);
      const delays = Array.from({ length: 40 }, (_, failures) => reconnectDelaySeconds(failures));
      expect(Math.max(...delays)).toBeLessThanOrEqual(RECONNECT_DELAY_CAP_SECONDS);
      // Still postgres.js's growth at first: the first tries come quickly, then it backs off.
      expect(reconnectDelaySeconds(0)).toBeLessThanOrEqual(0.01);
      expect(Math.min(...delays.slice(10))).toBeGreaterThanOrEqual(RECONNECT_DELAY_CAP_SECONDS / 2);
      // The cap is a pool's real schedule: it still answers.
      expect((await sql`select 1 as one`)[0]?.one).toBe(1);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});

describe('reserveConnection', () => {
  it('reserves a connection of a fresh pool (a plain reserve() never answers with fetch_types off)', async () => {
    const sql = openSql(await pg.createDatabase());
    try {
      const reserved = await Promise.race([
        reserveConnection(sql),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('reserve hung')), 5000)),
      ]);
      const [row] = await reserved<{ one: number }[]>`select 1 as one`;
      expect(row?.one).toBe(1);
      reserved.release();
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});
