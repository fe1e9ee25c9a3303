// A server that accepts the TCP connection but never starts its side of the SSH handshake (an sshd stuck
// before its banner, a middlebox that accepts and drops): a job cancelled meanwhile ends at once as
// 'aborted' and the half-open connection is closed, instead of both waiting out the 20 s connect timeout.
// The next operation opens a new connection. (A server that never opens its SFTP service: sftp-silent.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { type SilentServer, startSilentServer } from '../services/silent-server';
import { until, within } from '../services/wait';

const NAME = 'gem-backup-2026-01-01-000000.tar.gz';
const BACKUP = Buffer.alloc(1000, 7);
const source = { size: BACKUP.length, open: () => new Blob([BACKUP]).stream() };

let server: SilentServer;

beforeAll(async () => {
  server = await startSilentServer();
});

afterAll(async () => {
  await server?.close();
});

function provider(): SftpProvider {
  return new SftpProvider({
    host: '127.0.0.1',
    port: server.port,
    username: 'gem',
    password: 'any',
    remotePath: '/gem',
    // The product's default: the test shows the cancel does not wait for it.
    timeoutMs: 20_000,
  });
}

const cases: [string, (p: SftpProvider, signal: AbortSignal) => Promise<unknown>][] = [
  ['a listing', (p, signal) => p.list({ signal })],
  ['an upload', (p, signal) => p.put(NAME, source, { signal })],
  ['a download', (p, signal) => p.get(NAME, { signal })],
];

/** Starts `run` and cancels it once its connection was accepted; resolves to what it rejected with. */
async function cancelledWhileConnecting(
  what: string,
  run: (signal: AbortSignal) => Promise<unknown>,
): Promise<unknown> {
  const accepted = server.accepted();
  const controller = new AbortController();
  const running = run(controller.signal).then(
    () => new Error('it succeeded'),
    (error: unknown) => error,
  );
  await until(async () => server.accepted() > accepted, `${what} to connect`);
  controller.abort();
  return within(running, 3_000, `${what} cancelled during the SSH handshake to end`);
}

describe('an SFTP server that accepts the connection but never completes the SSH handshake', () => {
  it.each(cases)(
    'ends %s cancelled meanwhile at once, closes the half-open connection, and opens a new one next time',
    async (what, run) => {
      const sftp = provider();
      try {
        const failure = await cancelledWhileConnecting(what, (signal) => run(sftp, signal));
        expect(failure).toMatchObject({ code: 'aborted' });
        await within(
          until(async () => server.open() === 0, 'no connection open'),
          3_000,
          'the half-open connection to close',
        );

        // The cancelled connection serves no later operation: the next one connects anew.
        const connections = server.accepted();
        const again = await cancelledWhileConnecting(`${what} again`, (signal) => run(sftp, signal));
        expect(again).toMatchObject({ code: 'aborted' });
        expect(server.accepted()).toBe(connections + 1);
      } finally {
        await sftp.close();
      }
    },
  );
});
