/**
 * The offsite area lists each destination at most once per probe interval (5 min by default), and a
 * failure it saw used to stay for that long: a drill found "SFTP server cannot be reached" beside a
 * successful upload made seconds before. A success newer than the cached failure now looks again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { runJob } from '../offsite/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, downloadKeys, sftpSection } from './helpers';

let pg: TestPostgres;
let sshd: SshdService;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startTestAgent(pg, { modules: [settingsModule, healthModule, offsiteModule] });
  // A frozen server fails in 2 s; the probe keeps the default interval (minutes), longer than the test.
  offsiteServiceFor(t.agent, { providerOverrides: { sftp: { timeoutMs: 2000 } } });
  healthFor(t.agent);
  const saved = await call(t, 'PUT', '/settings', { offsite: { sftp: sftpSection(sshd, 'probe-after') } });
  expect(saved.status, JSON.stringify(saved.body)).toBe(200);
  await downloadKeys(t);
  await backupNow(t);
  // The first connection records the server's host key in the settings (which would start a new probe
  // by itself): made here, before health ever looks.
  const first = await runJob(t, 'POST', '/offsite/sftp/sync');
  expect(first.state, JSON.stringify(first.error)).toBe('succeeded');
}, 60_000);

afterAll(async () => {
  sshd?.resume();
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

const offsite = async () => (await call(t, 'GET', '/health')).body.areas.offsite.destinations.sftp;

describe('offsite health after a failure', () => {
  it('drops "cannot be reached" once an upload reached the destination, within the probe interval', async () => {
    sshd.pause();
    try {
      const reason = (await offsite()).reason as string;
      expect(reason).toMatch(/SFTP server cannot be reached/);
      // In the words Test Connection uses: the host and port, and what to check.
      expect(reason).toContain(`on port ${sshd.port}`);
      expect(reason).toMatch(/: check /);
    } finally {
      sshd.resume();
    }
    // The uploads that follow get the default timeout: a busy machine may need more than 2 s.
    offsiteServiceFor(t.agent, { providerOverrides: {} });
    await backupNow(t);
    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.state, JSON.stringify(sync.error)).toBe('succeeded');
    const after = await offsite();
    expect(after.reason ?? '').not.toMatch(/cannot be reached/);
    expect(after.status).toBe('ok');
  }, 60_000);
});
