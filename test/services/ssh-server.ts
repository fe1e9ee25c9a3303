/**
 * An SSH server in this process (ssh2's Server) that signs anyone in and hands each SFTP request to the
 * test: for the SFTP provider's tests of servers that misbehave in ways a real sshd will not (a service
 * that never answers, a request left unanswered, a server frozen mid-connection).
 */
import type { AddressInfo, Socket } from 'node:net';
import { type AcceptSftpConnection, type RejectConnection, Server, utils } from 'ssh2';

export interface InProcessSshServer {
  port: number;
  /** The server's side of each connection, in the order they came. */
  sockets: Socket[];
  /** How many connections are open now. */
  readonly open: number;
  /** Resolves once no connection is open (polled every 50 ms). */
  allClosed(): Promise<void>;
  /** Ends every connection (one the provider left open too) and the server. */
  close(): Promise<void>;
}

/** Starts a server on 127.0.0.1 (a free port) whose sessions' SFTP requests go to `onSftp`. */
export async function startInProcessSshServer(
  onSftp: (accept: AcceptSftpConnection, reject: RejectConnection) => void,
): Promise<InProcessSshServer> {
  const hostKey = utils.generateKeyPairSync('ed25519');
  const sockets: Socket[] = [];
  let open = 0;
  const server = new Server({ hostKeys: [hostKey.private] }, (client) => {
    open += 1;
    sockets.push((client as unknown as { _sock: Socket })._sock);
    client.on('close', () => {
      open -= 1;
    });
    client.on('authentication', (ctx) => ctx.accept());
    client.on('error', () => {});
    client.on('ready', () => {
      client.on('session', (acceptSession) => {
        acceptSession().on('sftp', onSftp);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    sockets,
    get open() {
      return open;
    },
    async allClosed() {
      while (open > 0) await new Promise((resolve) => setTimeout(resolve, 50));
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
