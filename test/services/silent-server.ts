// A TCP server that accepts connections and never answers (a NAS or SSH server stuck before its first
// answer): for tests of what a client's cancel or timeout does while it waits. It reads and drops what
// the client sends, so it sees the client close.
import { createServer, type Socket } from 'node:net';

export interface SilentServer {
  port: number;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections still open. */
  open(): number;
  close(): Promise<void>;
}

export async function startSilentServer(): Promise<SilentServer> {
  const sockets: Socket[] = [];
  let open = 0;
  const server = createServer((socket) => {
    sockets.push(socket);
    open += 1;
    socket.on('close', () => {
      open -= 1;
    });
    socket.on('error', () => {});
    socket.resume();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    accepted: () => sockets.length,
    open: () => open,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
