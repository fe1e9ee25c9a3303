// An SMB server that accepts the connection but never answers (a NAS stuck before its negotiate answer):
// a stat or a delete whose job is cancelled meanwhile ends at once as 'aborted' and smbclient is stopped,
// instead of both waiting out smbclient's 30 s timeout. (The real share: test/providers/smb.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmbProvider } from '../../agent/providers/smb';
import { type SilentServer, startSilentServer } from '../services/silent-server';
import { until, within } from '../services/wait';

const NAME = 'gem-backup-2026-01-01-000000.tar.gz';

let server: SilentServer;

beforeAll(async () => {
  server = await startSilentServer();
});

afterAll(async () => {
  await server?.close();
});

const cases: [string, (p: SmbProvider, signal: AbortSignal) => Promise<unknown>][] = [
  ['a stat', (p, signal) => p.stat(NAME, { signal })],
  ['a delete', (p, signal) => p.delete(NAME, { signal })],
];

describe('an SMB server that accepts the connection but never answers', () => {
  it.each(cases)('ends %s cancelled meanwhile at once, and smbclient goes', async (what, run) => {
    const smb = new SmbProvider({
      host: '127.0.0.1',
      port: server.port,
      share: 'backups',
      username: 'gem',
      password: 'any',
    });
    const accepted = server.accepted();
    const controller = new AbortController();
    const running = run(smb, controller.signal).then(
      () => new Error('it succeeded'),
      (error: unknown) => error,
    );
    await until(async () => server.accepted() > accepted, `${what} to connect`);
    controller.abort();
    const failure = await within(running, 3_000, `${what} cancelled while the server is silent`);
    expect(failure).toMatchObject({ code: 'aborted' });
    await within(
      until(async () => server.open() === 0, 'no connection open'),
      3_000,
      'smbclient to go and its connection to close',
    );
  });
});
