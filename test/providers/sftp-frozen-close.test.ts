// A connection whose server froze while it sat unused (the server's process stopped, its machine's kernel
// still up): ending it politely sends the server a goodbye it never acts on, so the agent's side would stay
// half-closed for ever, one socket kept per freeze. The provider gives up waiting after its timeout and
// closes its side. ssh2's Server, in this file, frozen by no longer reading its socket.
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpProvider } from '../../agent/providers/sftp';
import { type InProcessSshServer, startInProcessSshServer } from '../services/ssh-server';

let server: InProcessSshServer;

beforeAll(async () => {
  server = await startInProcessSshServer((acceptSftp) => {
    const sftp = acceptSftp();
    sftp.on('REALPATH', (id) => sftp.name(id, [{ filename: '/', longname: '/', attrs: {} as never }]));
    // The backup folder does not exist yet: list() answers [].
    sftp.on('LSTAT', (id) => sftp.status(id, 2));
  });
});

afterAll(async () => {
  await server?.close();
});

/** Whether a socket of this process still holds the connection from local port `from` to the server. */
async function held(from: number): Promise<boolean> {
  const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
  const table = await readFile('/proc/net/tcp', 'utf8');
  return table
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .some(
      (fields) =>
        fields[1] === `0100007F:${hex(from)}` &&
        fields[2] === `0100007F:${hex(server.port)}` &&
        fields[9] !== '0',
    );
}

describe('a connection whose server froze while unused', () => {
  it('is closed on our side after the timeout when the provider ends it', async () => {
    const provider = new SftpProvider({
      host: '127.0.0.1',
      port: server.port,
      username: 'gem',
      password: 'any',
      remotePath: '/gem',
      timeoutMs: 1000,
    });
    expect(await provider.list()).toEqual([]);
    const socket = server.sockets.at(-1)!;
    const from = socket.remotePort!;
    expect(await held(from)).toBe(true);
    socket.pause(); // frozen: reads nothing more, answers nothing, never closes
    await provider.close();
    await sleep(3000);
    expect(await held(from)).toBe(false);
  });
});
