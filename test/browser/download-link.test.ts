import { readFile, stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DownloadTickets, TICKET_LIFETIME_MS } from '../../agent/http/download-tickets';
import type { Job } from '../../agent/jobs/runner';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;
let filename: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  const { jobId } = (await (await t.request('/api/v1/backups', { method: 'POST' })).json()) as {
    jobId: string;
  };
  const job: Job = await t.agent.jobs.waitFor(jobId);
  filename = (job.result as { backup: { filename: string } }).backup.filename;
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('one-time download links and the public page routes', () => {
  it('serves the page and its assets without a token, with a strict content security policy', async () => {
    const page = await t.app.request('/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(await page.text()).toContain('<script type="module" src="/ui/app.js"></script>');
    const script = await t.app.request('/ui/app.js');
    expect(script.status).toBe(200);
    expect(script.headers.get('content-type')).toContain('text/javascript');
    expect((await t.app.request('/ui/../../config.ts')).status).toBe(404);
    expect((await t.app.request('/ui/secret.json')).status).toBe(404);
    // The API itself still wants the token.
    expect((await t.app.request('/api/v1/backups')).status).toBe(401);
  });

  it('issues a link only with the token, streams the whole file once, then refuses the same link', async () => {
    expect(
      (await t.app.request(`/api/v1/backups/${filename}/download-link`, { method: 'POST' })).status,
    ).toBe(401);
    const issued = await t.request(`/api/v1/backups/${filename}/download-link`, { method: 'POST' });
    expect(issued.status).toBe(200);
    const { url } = (await issued.json()) as { url: string };
    expect(url).toMatch(/^\/download\/[A-Za-z0-9_-]{32}$/);
    expect(url).not.toContain(filename);

    const first = await t.app.request(url);
    expect(first.status).toBe(200);
    expect(first.headers.get('content-disposition')).toBe(`attachment; filename="${filename}"`);
    const bytes = new Uint8Array(await first.arrayBuffer());
    expect(bytes.length).toBe((await stat(t.agent.catalog.pathOf(filename))).size);

    const second = await t.app.request(url);
    expect(second.status).toBe(404);
    expect(((await second.json()) as { error: { message: string } }).error.message).toMatch(
      /expired or was already used/,
    );
    expect((await t.app.request('/download/not-a-ticket')).status).toBe(404);
  });

  it('keeps the ticket out of the audit log: a HEAD leaves the link usable, so the log must not hold it', async () => {
    const issued = await t.request(`/api/v1/backups/${filename}/download-link`, { method: 'POST' });
    const { url } = (await issued.json()) as { url: string };
    const ticket = url.slice('/download/'.length);
    expect((await t.app.request(url, { method: 'HEAD' })).status).toBe(200);
    await t.agent.audit.flush();
    const log = await readFile(t.agent.paths.audit, 'utf8');
    expect(log).not.toContain(ticket);
    const lines = log
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.at(-2)).toMatchObject({
      method: 'POST',
      route: `/api/v1/backups/${filename}/download-link`,
    });
    expect(lines.at(-1)).toMatchObject({ method: 'HEAD', route: '/download/(ticket)', status: 200 });
    // The link still works once: the HEAD did not use it up.
    expect((await t.app.request(url)).status).toBe(200);
    await t.agent.audit.flush();
    expect(await readFile(t.agent.paths.audit, 'utf8')).not.toContain(ticket);
  });

  it('refuses a link for an unknown or badly named backup', async () => {
    const unknown = await t.request('/api/v1/backups/gem-backup-2000-01-01-000000.tar.gz/download-link', {
      method: 'POST',
    });
    expect(unknown.status).toBe(404);
    const badName = await t.request('/api/v1/backups/..%2Fkeys.json/download-link', { method: 'POST' });
    expect(badName.status).toBe(400);
  });

  it('lets a ticket lapse after its lifetime', () => {
    let now = 1_000_000;
    const tickets = new DownloadTickets(() => now);
    const ticket = tickets.issue('gem-backup-2026-01-01-000000.tar.gz');
    now += TICKET_LIFETIME_MS + 1;
    expect(tickets.redeem(ticket)).toBeUndefined();
    const fresh = tickets.issue('gem-backup-2026-01-01-000000.tar.gz');
    now += TICKET_LIFETIME_MS - 1;
    expect(tickets.redeem(fresh)).toBe('gem-backup-2026-01-01-000000.tar.gz');
  });
});
