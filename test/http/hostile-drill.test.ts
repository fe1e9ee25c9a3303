/**
 * What a careful attacker or a clumsy script sends the agent over HTTP, beyond test/faults/hostile-api:
 * HEAD on routes whose GET has an effect, bodies nested thousands deep or starting with a byte order
 * mark, numbers past any bound, secrets of the wrong shape, a doubled Authorization header, a path and
 * X-Forwarded-For of 15 KB on a request without a token (each one is an audit line), headers over 16 KB and
 * bytes that are not HTTP.
 */
import { appendFile, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveApp } from '../../agent/app';
import { jsonBodyTiming } from '../../agent/http/body';
import type { JobEvent } from '../../agent/jobs/runner';
import { startTestAgent, TEST_TOKEN, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { within } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
let server: ReturnType<typeof serveApp>;
let base: string;
let good: string;

const auth = { authorization: `Bearer ${TEST_TOKEN}` };

/** A request to the agent over real HTTP, with the admin token unless headers say otherwise. */
function call(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${base}${path}`, { ...init, headers: { ...auth, ...(init.headers as object) } });
}

async function errorOf(res: Response): Promise<{ code: string; message: string; details?: unknown }> {
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  return ((await res.json()) as { error: { code: string; message: string } }).error;
}

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  server = await new Promise((resolve) => {
    const s = serveApp(t.app, { hostname: '127.0.0.1', port: 0 }, (info) => {
      base = `http://127.0.0.1:${info.port}`;
      resolve(s);
    });
  });
  const res = await call('/api/v1/backups', { method: 'POST' });
  const job = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
  good = (job.result as { backup: { filename: string } }).backup.filename;
}, 120_000);

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  await t?.close();
  await pg?.stop();
});

describe('HEAD on a route whose GET does something', () => {
  it('HEAD /api/v1/keys/export sends no keys and does not count as the keys download', async () => {
    const status = async () =>
      (await (await call('/api/v1/keys/status')).json()) as {
        downloaded: boolean;
        lastDownloadedAt: unknown;
      };
    expect(await status()).toMatchObject({ downloaded: false, lastDownloadedAt: null });
    const head = await call('/api/v1/keys/export', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-disposition')).toMatch(/attachment; filename="gem-encryption-keys-/);
    expect(await head.text()).toBe('');
    // The "download your keys" warning must stay until someone has the keys.
    expect(await status()).toMatchObject({ downloaded: false, lastDownloadedAt: null });
    const get = await call('/api/v1/keys/export');
    expect(get.status).toBe(200);
    expect(JSON.parse(await get.text())).toMatchObject({ format: 'gem-encryption-keys' });
    expect(await status()).toMatchObject({ downloaded: true });
  });

  it('HEAD on a one-time download link leaves the link usable once', async () => {
    const link = (await (await call(`/api/v1/backups/${good}/download-link`, { method: 'POST' })).json()) as {
      url: string;
    };
    const size = (await t.agent.catalog.info(good)).size;
    const head = await fetch(`${base}${link.url}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(size));
    const get = await fetch(`${base}${link.url}`);
    expect(get.status).toBe(200);
    expect((await get.arrayBuffer()).byteLength).toBe(size);
    const again = await fetch(`${base}${link.url}`);
    expect(again.status).toBe(404);
    expect((await errorOf(again)).message).toMatch(/expired or was already used/);
  });

  it('HEAD on a backup download (the API route, a one-time link) leaves no descriptor of the file open', async () => {
    // Larger than what a stream reads before it waits for its reader (1 MiB chunks): a few MiB.
    const big = 'gem-backup-2020-01-01-000000.tar.gz';
    const path = t.agent.catalog.pathOf(big);
    await writeFile(path, await readFile(t.agent.catalog.pathOf(good)));
    await appendFile(path, Buffer.alloc(8 << 20));
    const openOnFile = async () => {
      let open = 0;
      for (const fd of await readdir('/proc/self/fd')) {
        if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) open++;
      }
      return open;
    };
    try {
      const size = (await stat(path)).size;
      const link = (await (
        await call(`/api/v1/backups/${big}/download-link`, { method: 'POST' })
      ).json()) as {
        url: string;
      };
      for (let i = 0; i < 5; i++) {
        const head = await call(`/api/v1/backups/${big}`, { method: 'HEAD' });
        expect(head.status).toBe(200);
        expect(head.headers.get('content-length')).toBe(String(size));
        const viaLink = await fetch(`${base}${link.url}`, { method: 'HEAD' });
        expect(viaLink.status).toBe(200);
        expect(viaLink.headers.get('content-length')).toBe(String(size));
      }
      // None opened the file: one left open stays open for good (a deleted backup's space never freed).
      expect(await openOnFile()).toBe(0);
      const get = await fetch(`${base}${link.url}`);
      expect((await get.arrayBuffer()).byteLength).toBe(size);
    } finally {
      await rm(path, { force: true });
    }
  });

  it('HEAD on a running job events answers at once and leaves no subscription behind', async () => {
    let release = () => {};
    const held = await t.agent.jobs.start('verify', () => new Promise<void>((r) => (release = r)), {
      mutating: false,
    });
    const listeners = (t.agent.jobs as unknown as { listeners: Map<string, Set<(e: JobEvent) => void>> })
      .listeners;
    try {
      for (let i = 0; i < 5; i++) {
        const head = await call(`/api/v1/jobs/${held.id}/events`, {
          method: 'HEAD',
          signal: AbortSignal.timeout(5000),
        });
        expect(head.status).toBe(200);
        expect(head.headers.get('content-type')).toMatch(/text\/event-stream/);
      }
      await new Promise((r) => setTimeout(r, 100));
      expect(listeners.get(held.id)?.size ?? 0).toBe(0);
    } finally {
      release();
      await t.agent.jobs.waitFor(held.id);
    }
  });
});

describe('bodies a script may send', () => {
  const deep = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;

  it('a body nested 100 000 deep is a 400 on every route that reads one, never a 500', async () => {
    const keysFile = `{"format":"gem-encryption-keys","version":1,"x":${deep(100_000)}}`;
    const cases: Array<[string, string, string]> = [
      ['POST', '/api/v1/keys/import', keysFile],
      ['POST', '/api/v1/keys/check', keysFile],
      ['POST', '/api/v1/keys/import', `{"file":${keysFile}}`],
      ['PUT', '/api/v1/settings', `{"autoBackup":${deep(100_000)}}`],
      ['POST', `/api/v1/backups/${good}/restore`, `{"confirm":${deep(100_000)}}`],
      ['POST', '/api/v1/offsite/s3/test', `{"bucket":${deep(100_000)}}`],
    ];
    const keyring = JSON.stringify(t.agent.keyring.toFile());
    for (const [method, path, body] of cases) {
      const res = await call(path, { method, body, headers: { 'content-type': 'application/json' } });
      expect(`${method} ${path}: ${res.status}`).toBe(`${method} ${path}: 400`);
      expect((await errorOf(res)).message).toMatch(/more than 64 levels deep/);
    }
    expect(JSON.stringify(t.agent.keyring.toFile())).toBe(keyring);
    // Brackets inside a string are text, not nesting.
    const res = await call('/api/v1/backups', {
      method: 'POST',
      body: JSON.stringify({ label: '[[[[' }),
      headers: { 'content-type': 'application/json' },
    });
    expect(res.status).toBe(422);
    expect((await errorOf(res)).message).toMatch(/^label: letters, digits/);
  });

  it('a JSON body that starts with a UTF-8 byte order mark (PowerShell, Notepad) is read as JSON', async () => {
    const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"collapsed":true}')]);
    const res = await call('/api/v1/keys/banner', {
      method: 'PUT',
      body,
      headers: { 'content-type': 'application/json' },
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ bannerCollapsed: true });
  });

  it('names the bound the schema sets, not the safe-integer range, for a number like 1e308', async () => {
    for (const [value, words] of [
      ['1e308', 'must be at most 100'],
      ['-1e308', 'must be at least 1'],
    ]) {
      const res = await call('/api/v1/settings', {
        method: 'PUT',
        body: `{"autoBackup":{"enabled":true,"schedule":"daily","maxBackups":${value}}}`,
        headers: { 'content-type': 'application/json' },
      });
      expect(res.status).toBe(422);
      const error = await errorOf(res);
      expect(error.message).toBe(`autoBackup.maxBackups: ${words}`);
      expect(JSON.stringify(error.details)).not.toMatch(/9007199254740991/);
    }
  });

  it('a secret of the wrong shape names what is wrong with it, not "Invalid input"', async () => {
    const cases: Array<[unknown, string]> = [
      [
        { offsite: { s3: { secretAccessKey: { set: 'yes' } } } },
        'offsite.s3.secretAccessKey.set: must be true or false',
      ],
      [{ offsite: { s3: { secretAccessKey: 5 } } }, 'offsite.s3.secretAccessKey: must be text or an object'],
      [
        { offsite: { sftp: { auth: { password: 12345 } } } },
        'offsite.sftp.auth.password: must be text or an object',
      ],
      [{ alerts: { email: { from: 'nope' } } }, 'alerts.email.from: not an e-mail address'],
      [{ alerts: { email: { from: 5 } } }, 'alerts.email.from: must be text'],
    ];
    for (const [body, message] of cases) {
      const res = await call('/api/v1/settings', {
        method: 'PUT',
        body: JSON.stringify(body),
        headers: { 'content-type': 'application/json' },
      });
      expect(res.status).toBe(422);
      const error = await errorOf(res);
      expect(error.message).toBe(message);
      expect(JSON.stringify(error)).not.toMatch(/Invalid input/);
    }
  });

  it("a keys file's passphrase beside a format field is checked as in {file, passphrase}: a 422, never a 500", async () => {
    const exported = await call('/api/v1/keys/export', {
      method: 'POST',
      body: JSON.stringify({ passphrase: 'correct horse battery' }),
      headers: { 'content-type': 'application/json' },
    });
    const file = JSON.parse(await exported.text()) as Record<string, unknown>;
    const keyring = JSON.stringify(t.agent.keyring.toFile());
    const cases: Array<[unknown, string]> = [
      [123, 'passphrase: must be text'],
      [true, 'passphrase: must be text'],
      [{ text: 'correct horse battery' }, 'passphrase: must be text'],
      ['x'.repeat(2000), 'passphrase: must be at most 1024 characters long'],
    ];
    for (const route of ['import', 'check']) {
      for (const [passphrase, message] of cases) {
        const res = await call(`/api/v1/keys/${route}`, {
          method: 'POST',
          body: JSON.stringify({ format: file.format, file, passphrase }),
          headers: { 'content-type': 'application/json' },
        });
        expect(`${route} ${JSON.stringify(passphrase).slice(0, 20)}: ${res.status}`).toBe(
          `${route} ${JSON.stringify(passphrase).slice(0, 20)}: 422`,
        );
        expect((await errorOf(res)).message).toBe(message);
      }
    }
    expect(JSON.stringify(t.agent.keyring.toFile())).toBe(keyring);
    // The right passphrase in that form still opens the file (check imports nothing).
    const res = await call('/api/v1/keys/check', {
      method: 'POST',
      body: JSON.stringify({ format: file.format, file, passphrase: 'correct horse battery' }),
      headers: { 'content-type': 'application/json' },
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, sameInstallation: true });
  });
});

describe('the Authorization header', () => {
  it('two Authorization headers (joined by a comma) are an invalid token, not a missing one', async () => {
    const res = await fetch(`${base}/api/v1/backups`, {
      headers: [
        ['authorization', `Bearer ${TEST_TOKEN}`],
        ['authorization', `Bearer ${TEST_TOKEN}`],
      ],
    });
    expect(res.status).toBe(401);
    expect((await errorOf(res)).message).toBe('invalid admin token');
    const pasted = await fetch(`${base}/api/v1/backups`, {
      headers: { authorization: `Bearer ${TEST_TOKEN.slice(0, 10)} ${TEST_TOKEN.slice(10)}` },
    });
    expect((await errorOf(pasted)).message).toBe('invalid admin token');
    const basic = await fetch(`${base}/api/v1/backups`, {
      headers: { authorization: `Basic ${TEST_TOKEN}` },
    });
    expect((await errorOf(basic)).message).toBe(
      'the admin token goes in the Authorization header as Bearer <token>',
    );
    const none = await fetch(`${base}/api/v1/backups`);
    expect((await errorOf(none)).message).toBe('missing admin token (Authorization: Bearer <token>)');
  });
});

describe('the audit log', () => {
  it('a request without a token adds one short line, whatever path and X-Forwarded-For it sends', async () => {
    const path = join(t.dataDir, 'audit-refused.log');
    await t.agent.audit.flush(); // the records of earlier requests are written after their answers
    const before = await stat(path).then(
      (s) => s.size,
      () => 0,
    );
    const res = await fetch(`${base}/api/v1/backups/${'a'.repeat(6000)}`, {
      headers: { 'x-forwarded-for': `203.0.113.7, ${'b'.repeat(9000)}` },
    });
    expect(res.status).toBe(401);
    await t.agent.audit.flush();
    const added = (await readFile(path)).subarray(before).toString('utf8').trim().split('\n');
    expect(added).toHaveLength(1);
    expect(added[0]!.length).toBeLessThan(1024);
    expect(JSON.parse(added[0]!)).toMatchObject({
      route: `/api/v1/backups/${'a'.repeat(256 - '/api/v1/backups/'.length)}…`,
      status: 401,
      forwardedFor: expect.stringMatching(/^203\.0\.113\.7, b+…$/),
    });
  });
});

describe('requests Node turns away before the app', () => {
  /** Sends raw bytes to the agent and returns all it answers before it closes the connection. */
  function raw(bytes: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(Number(new URL(base).port), '127.0.0.1', () => socket.write(bytes));
      let answer = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        answer += chunk;
      });
      socket.on('end', () => resolve(answer));
      socket.on('error', reject);
    });
  }

  it('headers over 16 KB get a 431 in the API error shape, and the agent keeps answering', async () => {
    const res = await call('/api/v1/backups', { headers: { 'x-padding': 'a'.repeat(20 * 1024) } });
    expect(res.status).toBe(431);
    const error = await errorOf(res);
    expect(error.code).toBe('too_large');
    expect(error.message).toMatch(/headers are larger than the 16 KB/);
    expect((await call('/api/v1/backups')).status).toBe(200);
  });

  it('a JSON body that stops half-way is given up after the idle limit: a 400, and the connection closes', async () => {
    const before = jsonBodyTiming.idleMs;
    jsonBodyTiming.idleMs = 500;
    try {
      const started = Date.now();
      // Content-Length 100, then 10 bytes, then nothing: a client that stopped sending.
      const answer = await within(
        raw(
          `PUT /api/v1/settings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TEST_TOKEN}\r\n` +
            'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"autoBack',
        ),
        15_000,
        'the agent to answer and close the connection',
      );
      expect(Date.now() - started).toBeGreaterThanOrEqual(450);
      expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
      const body = answer.slice(answer.indexOf('\r\n\r\n') + 4);
      expect(JSON.parse(body).error).toEqual({
        code: 'bad_request',
        message: 'the request body stopped: nothing arrived for 0.5 s',
      });
    } finally {
      jsonBodyTiming.idleMs = before;
    }
    expect((await call('/api/v1/settings')).status).toBe(200);
  });

  it('bytes that are not HTTP get a 400 in the API error shape, and the connection closes', async () => {
    const answer = await raw('HELLO agent\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    const body = answer.slice(answer.indexOf('\r\n\r\n') + 4);
    expect(JSON.parse(body)).toEqual({
      error: { code: 'bad_request', message: 'the request is not valid HTTP' },
    });
    expect(answer).toMatch(/\r\nconnection: close\r\n/);
  });
});
