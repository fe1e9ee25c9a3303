import { readdir, readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let good: string;

async function backupFiles(): Promise<string[]> {
  return (await readdir(t.agent.paths.backups)).sort();
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  good = (job.result as { backup: { filename: string } }).backup.filename;
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('authentication', () => {
  it('answers the health check without a token', async () => {
    const res = await t.app.request('/healthz');
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true });
  });

  for (const [what, header] of [
    ['no token', undefined],
    ['a wrong token', `Bearer ${TEST_TOKEN}x`],
    ['a token of another scheme', `Basic ${TEST_TOKEN}`],
  ] as const) {
    it(`refuses ${what} on every API route with 401 and the error shape`, async () => {
      for (const [method, path] of [
        ['GET', '/api/v1/backups'],
        ['POST', '/api/v1/backups'],
        ['GET', `/api/v1/backups/${good}`],
        ['DELETE', `/api/v1/backups/${good}`],
        ['GET', '/api/v1/keys/export'],
        ['POST', '/api/v1/keys/import'],
        ['GET', '/api/v1/jobs'],
      ] as const) {
        const res = await t.app.request(path, { method, headers: header ? { authorization: header } : {} });
        expect(res.status, `${method} ${path}`).toBe(401);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
      }
      expect(await backupFiles()).toContain(good);
    });
  }
});

describe('backup names from requests', () => {
  const bad = [
    '..%2F..%2Fetc%2Fpasswd',
    'gem-backup-2026-01-01-000000.tar.gz.bak',
    'gem-backup-2026-1-01-000000.tar.gz',
    '%2Fetc%2Fshadow',
    'gem-backup-2026-01-01-000000.tar.gz%00',
    'gem-backup-2026-01-01-00000０.tar.gz',
    'keyring.json',
  ];
  const routes = [
    ['GET', ''],
    ['DELETE', ''],
    ['POST', '/verify'],
  ] as const;
  for (const name of bad) {
    it(`refuses ${name} with 400 invalid_name and touches no file`, async () => {
      const before = await backupFiles();
      for (const [method, suffix] of routes) {
        const res = await t.request(`/api/v1/backups/${name}${suffix}`, { method });
        expect(res.status, `${method} ${name}${suffix}`).toBe(400);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_name');
      }
      expect(await backupFiles()).toEqual(before);
    });
  }

  // The URL itself resolves `..` (`/api/v1/backups/..` is `/api/v1/`), so it never reaches a backup route.
  it('answers .. with 404 (no route) and touches no file', async () => {
    const before = await backupFiles();
    for (const [method, suffix] of routes) {
      const res = await t.request(`/api/v1/backups/..${suffix}`, { method });
      expect(res.status, `${method} ..${suffix}`).toBe(404);
    }
    expect(await backupFiles()).toEqual(before);
  });
});

describe('uploads', () => {
  const upload = (name: string, body: BodyInit, headers: Record<string, string> = {}) =>
    t.request(`/api/v1/backups/upload?filename=${encodeURIComponent(name)}`, {
      method: 'POST',
      body,
      headers,
      duplex: 'half',
    } as RequestInit);

  /** A name `seconds` after the good backup's time: one an upload of it may take (a name taken, bumped). */
  const later = async (seconds: number) =>
    backupNameFor(new Date(Date.parse((await t.agent.catalog.info(good)).createdAt) + seconds * 1000));

  it('accepts a real backup under a new name that fits its date, verified', async () => {
    const bytes = await readFile(`${t.agent.paths.backups}/${good}`);
    const name = await later(30);
    const res = await upload(name, bytes);
    expect(res.status).toBe(201);
    expect(await res.json()).toMatchObject({ verified: true, size: bytes.length });
    expect(await backupFiles()).toContain(name);
  });

  it('refuses a file that is not a backup and keeps nothing', async () => {
    const before = await backupFiles();
    const res = await upload(
      'gem-backup-2020-01-02-000000.tar.gz',
      'PK\u0003\u0004 this is a zip file, not a backup',
    );
    expect(res.status).toBe(422);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('not_a_backup');
    expect(await backupFiles()).toEqual(before);
  });

  it('refuses a truncated backup and keeps nothing', async () => {
    const before = await backupFiles();
    const bytes = await readFile(`${t.agent.paths.backups}/${good}`);
    const res = await upload(await later(31), bytes.subarray(0, bytes.length - 1000));
    expect(res.status).toBe(422);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('corrupt_backup');
    expect(await backupFiles()).toEqual(before);
  });

  it('refuses an upload whose body is shorter than its Content-Length', async () => {
    const before = await backupFiles();
    const bytes = await readFile(`${t.agent.paths.backups}/${good}`);
    const res = await upload(await later(32), bytes.subarray(0, 5000), {
      'content-length': String(bytes.length),
    });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect(await backupFiles()).toEqual(before);
  });

  it('refuses a bad name and an existing name', async () => {
    expect((await upload('../../evil.tar.gz', 'x')).status).toBe(400);
    expect((await upload(good, 'x')).status).toBe(409);
  });

  it('says the filename is missing, and how to give it, for an upload without ?filename=; keeps nothing', async () => {
    const before = await backupFiles();
    const bytes = await readFile(`${t.agent.paths.backups}/${good}`);
    for (const path of ['/api/v1/backups/upload', '/api/v1/backups/upload?filename=']) {
      const res = await t.request(path, { method: 'POST', body: bytes, duplex: 'half' } as RequestInit);
      expect(res.status, path).toBe(400);
      const { error } = (await res.json()) as { error: { code: string; message: string } };
      expect(error.code).toBe('bad_request');
      expect(error.message).toBe(
        'filename missing: name the backup in the URL, e.g. POST /api/v1/backups/upload?filename=gem-backup-2026-11-28-231400.tar.gz',
      );
    }
    expect(await backupFiles()).toEqual(before);
  });
});

describe('JSON bodies', () => {
  it('says what to send for a keys import without a file, and changes no key', async () => {
    const active = t.agent.keyring.activeKey.id;
    const post = (body: string) =>
      t.request('/api/v1/keys/import', {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json' },
      });
    for (const [body, message] of [
      [
        '{}',
        'file: no keys file was sent: give the text of a gem-encryption-keys-YYYY-MM-DD.json export (or its JSON object) as "file"',
      ],
      [
        '{"file": 5}',
        'file: must be the text of a gem-encryption-keys-YYYY-MM-DD.json export, or its JSON object',
      ],
      [
        '{"file": ["a"]}',
        'file: must be the text of a gem-encryption-keys-YYYY-MM-DD.json export, or its JSON object',
      ],
    ] as const) {
      const res = await post(body);
      expect(res.status, body).toBe(422);
      expect(((await res.json()) as { error: { message: string } }).error.message, body).toBe(message);
    }
    expect(t.agent.keyring.activeKey.id).toBe(active);
  });

  it('answers malformed JSON with 400, a wrong type with 422 naming the field, an oversize body with 413', async () => {
    const post = (body: string, headers: Record<string, string> = {}) =>
      t.request('/api/v1/keys/banner', {
        method: 'PUT',
        body,
        headers: { 'content-type': 'application/json', ...headers },
      });
    expect((await post('{"collapsed": tru')).status).toBe(400);
    const wrong = await post('{"collapsed": "yes"}');
    expect(wrong.status).toBe(422);
    expect(((await wrong.json()) as { error: { message: string } }).error.message).toMatch(/^collapsed/);
    expect((await post(JSON.stringify({ collapsed: true, pad: 'x'.repeat(2 * 1024 * 1024) }))).status).toBe(
      413,
    );
  });
});
