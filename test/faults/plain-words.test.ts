// The words a person reads when GEM's database or a destination's server does not answer (page drill
// finding 6): what is wrong and what to check first, the system's own words last, in parentheses.
// Before, a backup said "cannot connect to the database: connect ECONNREFUSED 127.0.0.1:38837" and an
// SFTP Test Connection "SFTP server failed: getConnection: Connection lost before handshake".
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpDatabase } from '../../agent/backup/dump';
import { testConnection } from '../../agent/offsite/connection';
import type { DestinationSettings } from '../../agent/offsite/destinations';
import { checkRights } from '../../agent/restore/database';
import { PostgresTools, parseDatabaseUrl } from '../../agent/system/postgres-tools';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let work: string;
/** Accepts a connection and closes it at once: a port where no SSH server speaks, or a network that drops it. */
let dropper: Server;
let dropPort: number;

beforeAll(async () => {
  pg = await startPostgres();
  work = await mkdtemp(join(tmpdir(), 'gem-plain-words-'));
  dropper = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => dropper.listen(0, '127.0.0.1', resolve));
  dropPort = (dropper.address() as { port: number }).port;
});
afterAll(async () => {
  await new Promise((resolve) => dropper?.close(resolve));
  await pg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A database URL of the test server's, on a port where nothing listens: the database is down. */
async function downConn() {
  const conn = parseDatabaseUrl(await pg.createDatabase());
  return { ...conn, port: await freePort() };
}

function expectPlainDatabaseWords(error: { code?: string; message?: string }, port: number) {
  expect(error.code).toBe('dependency_down');
  expect(error.message).toMatch(/^GEM's database is not answering, so nothing was done\. /);
  expect(error.message).toContain('try again then');
  expect(error.message).toContain('check that PostgreSQL is running and that DATABASE_URL is right');
  // The system's words last, in a few plain words; never the bare code first.
  expect(error.message).toMatch(new RegExp(`\\(connection refused on [\\d.:]+:${port}\\)\\.$`));
  expect(error.message).not.toContain('ECONNREFUSED');
}

describe('GEM database down', () => {
  it('a backup says the database is not answering, what to do, and the cause last', async () => {
    const conn = await downConn();
    const error = await dumpDatabase({
      conn,
      tools: new PostgresTools(pg.binDir),
      target: join(work, 'db.dump'),
    }).then(
      () => ({}),
      (e: { code?: string; message?: string }) => e,
    );
    expectPlainDatabaseWords(error, conn.port);
  });

  it("a restore's first check says the same", async () => {
    const conn = await downConn();
    const error = await checkRights(conn).then(
      () => ({}),
      (e: { code?: string; message?: string }) => e,
    );
    expectPlainDatabaseWords(error, conn.port);
  });
});

describe('a destination server that drops the connection', () => {
  it('SFTP: names the host and port, what to check, and the library words last', async () => {
    const section = {
      enabled: true,
      host: '127.0.0.1',
      port: dropPort,
      username: 'gem',
      remotePath: 'backups',
      auth: { password: 'a password' },
    } as unknown as DestinationSettings<'sftp'>;
    const result = await testConnection('sftp', section);
    expect(result.ok).toBe(false);
    expect(result.message).toMatch(
      new RegExp(
        `^127\\.0\\.0\\.1 on port ${dropPort} closed the connection or stopped answering: check that an SFTP \\(SSH\\) server listens on that port`,
      ),
    );
    expect(result.message).toMatch(/\(getConnection: Connection lost before handshake\)\.$/);
    expect(result.message).not.toMatch(/^SFTP server failed/);
  });
});
