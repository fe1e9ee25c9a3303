// A TCP relay in front of a test server that counts what passes: the connections clients make and the bytes
// the server sends them. It can also freeze the connections open so far (as a server that stops answering)
// or drop them (as a server that went away), or hold back the server's answers for a while (as a server
// that stalls, then answers), while new connections go through as usual.
import { connect, createServer, type Socket } from 'node:net';

export interface Relay {
  host: string;
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Bytes the server sent to the clients so far. */
  readonly bytesFromServer: number;
  /** Connections open now. */
  readonly open: number;
  /** Stops passing anything on every connection open now: they hang. Later connections relay as usual. */
  freeze(): void;
  /** Holds back what the server sends on every connection open now (kept, not lost) until resume(). */
  pause(): void;
  resume(): void;
  /** Resets every connection open now, on both sides. */
  drop(): void;
  /** Resolves once no connection is open (the clients closed theirs). */
  closed(): Promise<void>;
  stop(): Promise<void>;
}

interface Pair {
  client: Socket;
  server: Socket;
  frozen: boolean;
  /** The server's answers held back (pause()). */
  held: boolean;
}

/** Starts a relay on a free port of 127.0.0.1 to `target` (a port on 127.0.0.1). */
export async function startRelay(target: number): Promise<Relay> {
  const pairs = new Set<Pair>();
  let connections = 0;
  let bytesFromServer = 0;
  let waiters: Array<() => void> = [];
  const settle = () => {
    if (pairs.size > 0) return;
    for (const waiter of waiters) waiter();
    waiters = [];
  };
  /** Passes `from`'s bytes on to `to`, with backpressure, until the pair is frozen. */
  const forward = (pair: Pair, from: Socket, to: Socket, count?: (bytes: number) => void) => {
    from.on('data', (data: Buffer) => {
      if (pair.frozen) return;
      count?.(data.length);
      if (!to.write(data)) {
        from.pause();
        to.once('drain', () => {
          if (!pair.frozen && !(from === pair.server && pair.held)) from.resume();
        });
      }
    });
    from.on('end', () => to.end());
  };
  const server = createServer((client) => {
    connections += 1;
    const upstream = connect(target, '127.0.0.1');
    const pair: Pair = { client, server: upstream, frozen: false, held: false };
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      if (pairs.delete(pair)) settle();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    forward(pair, client, upstream);
    forward(pair, upstream, client, (bytes) => {
      bytesFromServer += bytes;
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the relay has no port');
  return {
    host: '127.0.0.1',
    port: address.port,
    get connections() {
      return connections;
    },
    get bytesFromServer() {
      return bytesFromServer;
    },
    get open() {
      return pairs.size;
    },
    freeze() {
      for (const pair of pairs) {
        pair.frozen = true;
        pair.client.pause();
        pair.server.pause();
      }
    },
    pause() {
      for (const pair of pairs) {
        pair.held = true;
        pair.server.pause();
      }
    },
    resume() {
      for (const pair of pairs) {
        pair.held = false;
        if (!pair.frozen) pair.server.resume();
      }
    },
    drop() {
      for (const pair of pairs) {
        pair.client.resetAndDestroy();
        pair.server.destroy();
      }
    },
    closed: () =>
      new Promise<void>((resolve) => {
        waiters.push(resolve);
        settle();
      }),
    stop: async () => {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.server.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
