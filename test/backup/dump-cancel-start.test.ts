// A cancel (the CLI's Ctrl-C) that lands while a dump's first query is being answered: the dump ends
// cancelled at once, and no connection is left open. The pool the dump ends on cancel took a reserve()
// made after that end, opened a new connection for it and never answered: the backup stayed running
// in phase dump and the CLI never exited.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpDatabase } from '../../agent/backup/dump';
import { openSql, reserveConnection } from '../../agent/db/connect';
import { PostgresTools, parseDatabaseUrl } from '../../agent/system/postgres-tools';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { until, within } from '../services/wait';

let pg: TestPostgres;
let work: string;

interface AnswerProxy {
  url: string;
  /** Called once, just after the answer to a session's first query was passed on to the client. */
  onFirstAnswer: () => void;
  /** Client connections still open. */
  open(): number;
  close(): Promise<void>;
}

/**
 * A TCP proxy to `url` that watches each session's messages from the server: the first ReadyForQuery
 * ('Z') ends the start-up, the second answers the session's first query. That answer is written to
 * the client and, before the client can read it, `onFirstAnswer` runs: a cancel in that moment.
 */
async function answerProxy(url: string): Promise<AnswerProxy> {
  const target = new URL(url);
  const clients = new Set<Socket>();
  let fired = false;
  const proxy: AnswerProxy = {
    url: '',
    onFirstAnswer: () => {},
    open: () => clients.size,
    close: () => {
      for (const client of clients) client.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  const server: Server = createServer((client) => {
    clients.add(client);
    client.on('close', () => clients.delete(client));
    const upstream = new Socket();
    upstream.connect(Number(target.port), target.hostname);
    client.pipe(upstream);
    let pending = Buffer.alloc(0);
    let ready = 0;
    upstream.on('data', (data: Buffer) => {
      pending = Buffer.concat([pending, data]);
      let at = 0;
      while (pending.length - at >= 5) {
        const end = at + 1 + pending.readUInt32BE(at + 1);
        if (end > pending.length) break;
        const type = String.fromCharCode(pending[at] ?? 0);
        at = end;
        if (type === 'Z' && ++ready === 2 && !fired) {
          fired = true;
          client.write(pending.subarray(0, at));
          pending = pending.subarray(at);
          at = 0;
          proxy.onFirstAnswer();
        }
      }
      if (at > 0) client.write(pending.subarray(0, at));
      pending = pending.subarray(at);
    });
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the proxy has no port');
  const proxied = new URL(url);
  proxied.port = String(address.port);
  proxy.url = proxied.toString();
  return proxy;
}

beforeAll(async () => {
  pg = await startPostgres();
  work = await mkdtemp(join(tmpdir(), 'gem-dump-cancel-'));
});

afterAll(async () => {
  await pg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a cancel while the dump opens its snapshot connection', () => {
  it('ends the dump cancelled at once, with no connection left open', async () => {
    const proxy = await answerProxy(await pg.createDatabase());
    try {
      const controller = new AbortController();
      proxy.onFirstAnswer = () => controller.abort();
      const dumping = dumpDatabase({
        conn: parseDatabaseUrl(proxy.url),
        tools: new PostgresTools(pg.binDir),
        target: join(work, 'db.dump'),
        signal: controller.signal,
      });
      const outcome = await within(
        dumping.then(
          () => 'completed',
          (error: { code?: string }) => error.code,
        ),
        10_000,
        'the cancelled dump to end',
      );
      expect(controller.signal.aborted).toBe(true);
      expect(outcome).toBe('cancelled');
      await until(async () => proxy.open() === 0, 'the dump to close its connection', 50);
    } finally {
      await proxy.close();
    }
  });
});

describe('reserveConnection', () => {
  it('refuses to reserve once its signal aborted, the pool ended meanwhile, instead of waiting for ever', async () => {
    // The end waits for the first query here (no timeout): its answer arrives, then the reserve would
    // be made on the ended pool. The dump's end (timeout 0) comes to this when the answer is read first.
    const proxy = await answerProxy(await pg.createDatabase());
    const sql = openSql(proxy.url);
    try {
      const controller = new AbortController();
      controller.signal.addEventListener('abort', () => void sql.end().catch(() => {}));
      proxy.onFirstAnswer = () => controller.abort();
      const outcome = await within(
        reserveConnection(sql, controller.signal).then(
          (reserved) => {
            reserved.release();
            return 'reserved';
          },
          (error: { code?: string }) => error.code,
        ),
        5_000,
        'the reserve to answer',
      );
      expect(outcome).toBe('cancelled');
      await until(async () => proxy.open() === 0, 'the pool to close its connection', 50);
    } finally {
      await sql.end({ timeout: 0 }).catch(() => {});
      await proxy.close();
    }
  });
});
