/** The SMTP client reads replies of bounded size: a server (or anyone before STARTTLS) sending without end fails the send. */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { sendMail } from '../../agent/alerts/smtp';

const servers: net.Server[] = [];

afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
});

/** The most a hostile server sends per connection: enough to prove the point, never unbounded in a test. */
const SEND_AT_MOST = 256 * 1024 * 1024;

/**
 * A real TCP server on loopback that answers every connection with `first` and then `piece` again and
 * again (as fast as the client reads) until the client hangs up. Resolves with its port and a record
 * of the bytes sent per connection.
 */
async function hostileServer(first: string, piece: string): Promise<{ port: number; sent: number[] }> {
  const sent: number[] = [];
  const server = net.createServer((socket) => {
    const index = sent.push(0) - 1;
    socket.on('error', () => {});
    const chunk = Buffer.from(piece.repeat(Math.max(1, Math.floor(65536 / piece.length))));
    const pump = () => {
      while (!socket.destroyed && sent[index]! < SEND_AT_MOST) {
        sent[index]! += chunk.length;
        if (!socket.write(chunk)) return void socket.once('drain', pump);
      }
      socket.end();
    };
    socket.write(first);
    pump();
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, sent };
}

const message = { from: 'gem@example.com', to: ['ops@example.com'], subject: 'test', text: 'hello' };

describe('SMTP replies of bounded size', () => {
  it('a greeting line that never ends fails the send instead of filling memory', async () => {
    const { port } = await hostileServer('220 ', 'x');
    await expect(
      sendMail({ host: '127.0.0.1', port, secure: false, timeoutMs: 30_000 }, message),
    ).rejects.toThrow(/a reply line that does not end/);
  });

  it('a multi-line reply that never ends fails the send', async () => {
    const { port } = await hostileServer('', '220-more to come\r\n');
    await expect(
      sendMail({ host: '127.0.0.1', port, secure: false, timeoutMs: 30_000 }, message),
    ).rejects.toThrow(/a reply of more than 1000 lines/);
  });

  it('replies sent without end, none asked for, fail the send', async () => {
    const { port } = await hostileServer('220 hi\r\n', '250 ok\r\n');
    await expect(
      sendMail({ host: '127.0.0.1', port, secure: false, timeoutMs: 30_000 }, message),
    ).rejects.toThrow(/more than 100 replies nobody asked for/);
  });
});
