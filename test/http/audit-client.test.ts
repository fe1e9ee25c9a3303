/** The audit log names the socket's peer as the client; X-Forwarded-For, which anyone may send, is a field apart. */
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog, auditRoutes } from '../../agent/http/audit';

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe('audit client', () => {
  it('records the socket address as client and X-Forwarded-For as forwardedFor', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gem-audit-'));
    dirs.push(dir);
    const audit = new AuditLog(join(dir, 'audit.log'));
    const app = new Hono();
    app.use('/backups/*', auditRoutes(audit));
    app.get('/backups', (c) => c.json([]));
    const server: ServerType = await new Promise((resolve) => {
      const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, () => resolve(s));
    });
    try {
      const { port } = server.address() as AddressInfo;
      const res = await fetch(`http://127.0.0.1:${port}/backups`, {
        headers: { 'x-forwarded-for': '203.0.113.9' },
      });
      expect(res.status).toBe(200);
      await audit.flush();
      const lines = (await readFile(join(dir, 'audit.log'), 'utf8'))
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ route: '/backups', status: 200, forwardedFor: '203.0.113.9' });
      expect(String(lines[0]!.client)).toMatch(/^(::ffff:)?127\.0\.0\.1$/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    // Called without a socket (app.request in tests), the line is still written, without a client.
    await app.request('/backups');
    await audit.flush();
    const last = JSON.parse((await readFile(join(dir, 'audit.log'), 'utf8')).trim().split('\n').at(-1)!);
    expect(last).toMatchObject({ route: '/backups', status: 200 });
    expect(last.client).toBeUndefined();
  });

  it('at its rotation size, becomes audit.log.1 (the one before dropped): the newest records in order, 0600', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gem-audit-'));
    dirs.push(dir);
    const path = join(dir, 'audit.log');
    const audit = new AuditLog(path, 1000);
    for (let n = 0; n < 40; n++) void audit.record({ route: '/api/v1/backups', status: 200, n });
    await audit.flush();
    const read = async (file: string) =>
      (await readFile(file, 'utf8'))
        .trim()
        .split('\n')
        .map((line) => (JSON.parse(line) as { n: number }).n);
    const older = await read(`${path}.1`);
    const newer = await read(path);
    // No gap and no reordering between the two files, up to the last record.
    const kept = [...older, ...newer];
    expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => 40 - kept.length + i));
    expect(older.length).toBeGreaterThan(5);
    for (const file of [path, `${path}.1`]) {
      const info = await stat(file);
      expect(info.size).toBeLessThan(1200);
      expect(info.mode & 0o777).toBe(0o600);
    }
  });

  it('requests turned away for their token rotate in audit-refused.log: a flood of them never pushes an authorized access out', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gem-audit-'));
    dirs.push(dir);
    const path = join(dir, 'audit.log');
    const audit = new AuditLog(path, 1000);
    void audit.record({ route: '/api/v1/keys/export', status: 200, who: 'owner' });
    for (let n = 0; n < 200; n++) void audit.record({ route: '/api/v1/keys/x', status: 401, n });
    await audit.flush();
    const lines = (file: string) =>
      readFile(file, 'utf8').then((text) =>
        text
          .trim()
          .split('\n')
          .map((line) => JSON.parse(line)),
      );
    expect(await lines(path)).toEqual([expect.objectContaining({ status: 200, who: 'owner' })]);
    const refused = join(dir, 'audit-refused.log');
    expect(audit.refusedPath).toBe(refused);
    const newest = await lines(refused);
    expect(newest.at(-1)).toMatchObject({ status: 401, n: 199 });
    expect((await lines(`${refused}.1`)).length).toBeGreaterThan(5);
    for (const file of [refused, `${refused}.1`]) expect((await stat(file)).mode & 0o777).toBe(0o600);
  });
});
