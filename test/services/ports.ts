// Free TCP ports on 127.0.0.1 for the real services each test file starts.
import { createServer, Socket } from 'node:net';

/** A port that was free a moment ago: listen on 127.0.0.1:0, note the port, close. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('could not read the listening port'));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });
}

/** Resolves once something accepts TCP connections on host:port, or rejects after `timeoutMs`. */
export async function waitForPort(
  port: number,
  options: { host?: string; timeoutMs?: number; exited?: () => string | undefined } = {},
): Promise<void> {
  const host = options.host ?? '127.0.0.1';
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  for (;;) {
    const exitReason = options.exited?.();
    if (exitReason !== undefined) throw new Error(exitReason);
    const open = await new Promise<boolean>((resolve) => {
      const socket = new Socket();
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => {
        socket.destroy();
        resolve(false);
      });
      socket.connect(port, host);
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after waiting`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
