/** Hostile input to every agent route: bad tokens, oversize and malformed bodies, wrong types, hostile names; a 4xx, nothing changed. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { faultReport } from './report';

const report = faultReport('hostile-api', 'hostile requests');

let pg: TestPostgres;
let t: TestAgent;
let good: string;
const failures: string[] = [];

// A bare ".." segment is resolved by URL parsing before any server sees it (it turns one route into another), so dots go encoded with something else.
const HOSTILE_NAMES = [
  '..%2F',
  '...',
  '..%2F..%2Fetc%2Fpasswd',
  '%2e%2e%2f%2e%2e%2fkeyring.json',
  '..%5C..%5Ckeyring.json',
  'keyring.json',
  '%00',
  'gem-backup-2026-01-01-000000.tar.gz%00.txt',
  encodeURIComponent('gem-backup-2026-01-01-000000\u202Ezg.rat.tar.gz'),
  encodeURIComponent('gem-backup-\uFF12\uFF10\uFF12\uFF16-01-01-000000.tar.gz'),
  encodeURIComponent('g\u0435m-backup-2026-01-01-000000.tar.gz'),
  encodeURIComponent('gem-backup-2026-01-01-000000.tar.gz\u200B'),
  encodeURIComponent(' gem-backup-2026-01-01-000000.tar.gz'),
  'a'.repeat(5000),
  '9'.repeat(400),
  '-1',
  '1e309',
  encodeURIComponent('\u202E\uFEFF\u0000'),
];

const BAD_TOKENS: [string, Record<string, string>][] = [
  ['no token', {}],
  ['a wrong token', { authorization: `Bearer ${TEST_TOKEN}x` }],
  ['a prefix of the token', { authorization: `Bearer ${TEST_TOKEN.slice(0, 16)}` }],
  ['the token upper-cased', { authorization: `Bearer ${TEST_TOKEN.toUpperCase()}` }],
  ['the token in another scheme', { authorization: `Basic ${TEST_TOKEN}` }],
  ['two tokens', { authorization: `Bearer ${TEST_TOKEN} ${TEST_TOKEN}` }],
  ['a huge token', { authorization: `Bearer ${'A'.repeat(64 * 1024)}` }],
  ['the token as a query', {}],
];

const HOSTILE_BODIES: [string, string][] = [
  ['malformed JSON', '{"label":'],
  ['not JSON', 'label=x&confirm=y'],
  ['NUL bytes', '\u0000\u0000'],
  ['a JSON array', '[]'],
  ['a JSON string', '"gem-backup"'],
  ['a JSON number', '123'],
  ['JSON null', 'null'],
  ['wrong types', '{"label":12,"passphrase":false,"collapsed":"yes","installationId":7,"confirm":1}'],
  ['a huge number', '{"label":1e999,"keepPrevious":1e999,"collapsed":1e999,"maxBackups":1e999}'],
  ['unknown fields', '{"__proto__":{"admin":true},"constructor":{"prototype":{"x":1}}}'],
  ['path traversal', '{"label":"../../etc/passwd","installationId":"../../keyring","confirm":"../x"}'],
  ['unicode tricks', '{"label":"\\u202Egpj.exe","installationId":"\\uff10\\uff11","confirm":"g\\u0435m"}'],
  ['deep nesting', `${'['.repeat(5000)}${']'.repeat(5000)}`],
  ['an oversize body', `{"label":"${'x'.repeat(2 * 1024 * 1024)}"}`],
];

/** Routes that read a JSON body (the others ignore it, so body fuzz does not apply to them). */
const BODY_ROUTES = new Set([
  'POST /api/v1/backups',
  'POST /api/v1/backups/:filename/restore',
  'POST /api/v1/keys/export',
  'POST /api/v1/keys/import',
  'POST /api/v1/keys/check',
  'PUT /api/v1/keys/banner',
  'PUT /api/v1/settings',
  'POST /api/v1/dr/recover',
  'POST /api/v1/offsite/:provider/test',
  'POST /api/v1/offsite/:provider/backups/:filename/restore',
]);

function routes(): { method: string; path: string }[] {
  const seen = new Set<string>();
  return t.app.routes
    .filter((r) => r.method !== 'ALL')
    .filter((r) => {
      const key = `${r.method} ${r.path}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    })
    .map((r) => ({ method: r.method, path: r.path }));
}

function withParams(path: string, values: Record<string, string> = {}): string {
  return path.replace(
    /:(\w+)/g,
    (_, name: string) => values[name] ?? (name === 'provider' ? 's3' : name === 'id' ? 'job-0' : good),
  );
}

/** Checks one response: a 4xx with `{error:{code,message}}`. */
async function expectRefused(what: string, res: Response, allow?: (body: unknown) => boolean): Promise<void> {
  report.inject();
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const shaped = typeof error?.code === 'string' && typeof error?.message === 'string';
  const ok =
    (res.status >= 400 && res.status < 500 && shaped) || (res.status === 200 && allow?.(body) === true);
  report.tried(ok, what);
  if (!ok) failures.push(`${what}: ${res.status} ${text.slice(0, 200)}`);
}

async function snapshot() {
  const files: string[] = [];
  const walk = async (dir: string, rel: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const path = join(dir, name);
      const s = await stat(path);
      // The audit log records every attempt (as it should); the agent's own cluster files are not ours to list.
      if (rel === '' && (name.startsWith('audit') || name === 'gem')) continue;
      if (s.isDirectory()) await walk(path, `${rel}${name}/`);
      else files.push(`${rel}${name}:${s.size}:${s.mtimeMs}`);
    }
  };
  await walk(t.dataDir, '');
  const settings = await withSql(t.agent.databaseUrl, (sql) => sql`select * from gem_backup.settings`);
  return {
    files,
    settings: JSON.stringify(settings),
    catalog: JSON.stringify(await t.agent.catalog.list()),
    keyring: await readFile(t.agent.paths.keyring, 'utf8'),
    jobs: t.agent.jobs.list().length,
  };
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg); // createApp mounts every module, as the agent does
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  good = (job.result as { backup: { filename: string } }).backup.filename;
});

afterAll(async () => {
  report.print();
  await t?.close();
  await pg?.stop();
});

describe('hostile input to every route', () => {
  let before: Awaited<ReturnType<typeof snapshot>>;

  it('the app lists its routes', async () => {
    before = await snapshot();
    const api = routes().filter((r) => r.path.startsWith('/api/v1/'));
    expect(api.length).toBeGreaterThan(20);
    for (const key of BODY_ROUTES) expect(routes().map((r) => `${r.method} ${r.path}`)).toContain(key);
  });

  it('refuses every bad token on every API route with 401', async () => {
    for (const r of routes().filter((r) => r.path.startsWith('/api/v1/'))) {
      for (const [what, headers] of BAD_TOKENS) {
        const query =
          what === 'the token as a query' ? `?token=${TEST_TOKEN}&access_token=${TEST_TOKEN}` : '';
        const res = await t.app.request(`${withParams(r.path)}${query}`, { method: r.method, headers });
        await expectRefused(`${r.method} ${r.path} with ${what}`, res);
        if (res.status !== 401) failures.push(`${r.method} ${r.path} with ${what}: ${res.status}, not 401`);
      }
    }
  });

  it('refuses hostile names in every path parameter', async () => {
    for (const r of routes().filter((r) => r.path.includes(':'))) {
      for (const param of r.path.match(/:(\w+)/g)!.map((p) => p.slice(1))) {
        for (const name of HOSTILE_NAMES) {
          const body = r.path.endsWith('/restore')
            ? JSON.stringify({ confirm: decodeURIComponent(name) })
            : undefined;
          const res = await t.request(withParams(r.path, { [param]: name }), {
            method: r.method,
            ...(body ? { body, headers: { 'content-type': 'application/json' } } : {}),
          });
          await expectRefused(`${r.method} ${r.path} with ${param}=${name.slice(0, 60)}`, res);
        }
      }
    }
  });

  it('refuses malformed, oversize and mistyped bodies on every route that reads one', async () => {
    for (const r of routes().filter((r) => BODY_ROUTES.has(`${r.method} ${r.path}`))) {
      for (const [what, body] of HOSTILE_BODIES) {
        const res = await t.request(withParams(r.path), {
          method: r.method,
          body,
          headers: { 'content-type': 'application/json' },
        });
        // Test Connection answers every well-formed request 200 with {ok:false, message} by design.
        const allow =
          r.path.endsWith('/test') &&
          !['malformed JSON', 'not JSON', 'NUL bytes', 'an oversize body', 'deep nesting'].includes(what)
            ? (b: unknown) => (b as { ok?: unknown }).ok === false
            : undefined;
        await expectRefused(`${r.method} ${r.path} with ${what}`, res, allow);
      }
    }
  });

  it('refuses hostile uploads (names in the query, bodies that are no backup)', async () => {
    for (const name of [...HOSTILE_NAMES, '']) {
      const res = await t.request(`/api/v1/backups/upload?filename=${name}`, {
        method: 'POST',
        body: 'GEMBKP',
      });
      await expectRefused(`upload as ${name.slice(0, 60)}`, res);
    }
    for (const [what, body] of HOSTILE_BODIES) {
      const res = await t.request('/api/v1/backups/upload?filename=gem-backup-2001-01-01-000000.tar.gz', {
        method: 'POST',
        body,
      });
      await expectRefused(`upload of ${what}`, res);
    }
  });

  it('changed nothing, and the agent is healthy afterwards', async () => {
    const after = await snapshot();
    expect(after.files).toEqual(before.files);
    expect(after.settings).toEqual(before.settings);
    expect(after.catalog).toEqual(before.catalog);
    expect(after.keyring).toEqual(before.keyring);
    expect(after.jobs).toEqual(before.jobs);
    expect(failures).toEqual([]);
    expect((await t.app.request('/healthz')).status).toBe(200);
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(job.state).toBe('succeeded');
  });
});
