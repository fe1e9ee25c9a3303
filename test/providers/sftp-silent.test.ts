// An SSH server that signs the user in and then never answers the SFTP request (a subsystem that hangs:
// a home on a dead network mount, a shell start-up file waiting for input): ssh2's Server, in this file,
// whose transport stays alive (keepalives are answered). The provider gives up after its timeout with a
// clear error and closes the connection, instead of waiting for ever. (The real server: sftp.test.ts.)
import type { AddressInfo } from 'node:net';
import { Server, utils } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { within } from '../services/wait';

let server: Server;
let port: number;
let open = 0;
const clients = new Set<{ end(): void }>();

beforeAll(async () => {
  const hostKey = utils.generateKeyPairSync('ed25519');
  server = new Server({ hostKeys: [hostKey.private] }, (client) => {
    open += 1;
    clients.add(client);
    client.on('close', () => {
      open -= 1;
      clients.delete(client);
    });
    client.on('authentication', (ctx) => ctx.accept());
    client.on('error', () => {});
    client.on('ready', () => {
      client.on('session', (acceptSession) => {
        // The SFTP request is never answered, neither accepted nor refused.
        acceptSession().on('sftp', () => {});
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const client of clients) client.end(); // one the provider left open
  await new Promise<void>((resolve) => server?.close(() => resolve()));
});

describe('an SSH server whose SFTP service never answers', () => {
  it('is given up after the timeout as unreachable, and its connection closed', async () => {
    const provider = new SftpProvider({
      host: '127.0.0.1',
      port,
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
    await within(
      (async () => {
        while (open > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      })(),
      5_000,
      'the connection to close',
    );
    await provider.close();
  });
});
