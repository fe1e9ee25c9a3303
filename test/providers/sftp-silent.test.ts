// An SSH server that signs the user in and then never answers the SFTP request (a subsystem that hangs:
// a home on a dead network mount, a shell start-up file waiting for input): ssh2's Server, in this file,
// whose transport stays alive (keepalives are answered). The provider gives up after its timeout with a
// clear error and closes the connection, instead of waiting for ever. (The real server: sftp.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { type InProcessSshServer, startInProcessSshServer } from '../services/ssh-server';
import { within } from '../services/wait';

let server: InProcessSshServer;

// The SFTP request is never answered, neither accepted nor refused.
beforeAll(async () => {
  server = await startInProcessSshServer(() => {});
});

afterAll(async () => {
  await server?.close();
});

describe('an SSH server whose SFTP service never answers', () => {
  it('is given up after the timeout as unreachable, and its connection closed', async () => {
    const provider = new SftpProvider({
      host: '127.0.0.1',
      port: server.port,
      username: 'gem',
      password: 'any',
      remotePath: '/gem',
      timeoutMs: 1000,
    });
    const failure = await within(
      provider.list().catch((error: unknown) => error),
      10_000,
      'the listing of a server whose SFTP service never answers',
    );
    expect(failure).toMatchObject({ code: 'unreachable' });
    expect((failure as Error).message).toMatch(/SFTP .*did not answer within 1 s/);
    await within(server.allClosed(), 5_000, 'the connection to close');
    await provider.close();
  });
});
