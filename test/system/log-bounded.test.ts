// Whatever a log line is given, it is written in bounded time and size, with its secrets redacted: a cyclic
// value, a deep one, a huge one, a socket. Before, a value deeper than six levels was written as it was
// (unredacted; a cyclic one made the logging call throw) and a buffer or list was written item by item.
import { createConnection, createServer, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/log';

/** The one line `fields` is logged as, by a real logger. */
function logged(fields: Record<string, unknown>): string {
  const lines: string[] = [];
  createLogger({ write: (line) => lines.push(line) }).warn('a transfer failed and is retried', fields);
  expect(lines).toHaveLength(1);
  return lines[0] ?? '';
}

/** An object `levels` deep whose every level holds `width` fields pointing at the same next level. */
function wideGraph(levels: number, width: number): Record<string, unknown> {
  let level: Record<string, unknown> = { password: 'graph-secret' };
  for (let i = 0; i < levels; i++) {
    const next: Record<string, unknown> = {};
    for (let k = 0; k < width; k++) next[`field${k}`] = level;
    level = next;
  }
  return level;
}

describe('a log line of a value too large to write whole', () => {
  it('a cyclic value is written with its cycles marked and its secrets redacted', () => {
    const client: Record<string, unknown> = { password: 'cyclic-secret', config: { token: 'cyclic-token' } };
    client.self = client;
    (client.config as Record<string, unknown>).client = client;
    const line = logged({ client });
    const { client: written } = JSON.parse(line);
    expect(written.self).toBe('[cycle]');
    expect(written.config.client).toBe('[cycle]');
    expect(written.password).toBe('[redacted]');
    expect(line).not.toContain('cyclic-secret');
    expect(line).not.toContain('cyclic-token');
  });

  it('a secret deeper than the walk goes is not written', () => {
    let deep: Record<string, unknown> = { password: 'deep-secret' };
    for (let i = 0; i < 12; i++) deep = { inner: deep };
    const line = logged({ deep });
    expect(line).not.toContain('deep-secret');
    expect(line).toContain('[not logged: too large]');
  });

  it('a huge value (a shared graph of millions of paths, a long list, a buffer) is cut short, its secrets redacted', () => {
    const line = logged({
      graph: wideGraph(6, 10),
      list: Array.from({ length: 200_000 }, (_, i) => i),
      data: Buffer.alloc(200_000, 1),
      token: 'top-token',
    });
    expect(line.length).toBeLessThan(100_000);
    expect(line).not.toContain('graph-secret');
    expect(line).not.toContain('top-token');
    const written = JSON.parse(line);
    expect(written.data).toBe('[200000 bytes]');
    expect(written.token).toBe('[redacted]');
  });

  it('a socket is named, not walked', async () => {
    const server = createServer((s) => s.end());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const socket: Socket = createConnection(port, '127.0.0.1');
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      const line = logged({ attempt: 1, socket, nested: { socket } });
      expect(JSON.parse(line)).toMatchObject({
        attempt: 1,
        socket: '[Socket]',
        nested: { socket: '[Socket]' },
      });
    } finally {
      socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('plain fields are written whole (a date as its ISO time, an error as its name, message and code)', () => {
    const at = new Date('2026-01-02T03:04:05.000Z');
    const written = JSON.parse(
      logged({
        code: 'unreachable',
        attempt: 2,
        names: ['a', 'b'],
        at,
        error: new Error('boom'),
        auth: { password: 'p' },
      }),
    );
    expect(written).toMatchObject({
      code: 'unreachable',
      attempt: 2,
      names: ['a', 'b'],
      at: '2026-01-02T03:04:05.000Z',
      error: { name: 'Error', message: 'boom' },
      auth: { password: '[redacted]' },
    });
  });
});
