import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drServiceFor } from '../../agent/dr/service';
import { healthFor } from '../../agent/health/service';
import { metricsRoutes } from '../../agent/http/routes/metrics';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { backupNow } from '../health/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { parsePrometheusText } from './prometheus-parser';

const METRICS_TOKEN = 'metrics-only-token-0123456789';
let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { env: { GEM_METRICS_TOKEN: METRICS_TOKEN } });
  t.app.route('/metrics', metricsRoutes(t.agent));
  healthFor(t.agent);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const scrape = (token?: string) =>
  t.app.request('/metrics', token ? { headers: { authorization: `Bearer ${token}` } } : {});

describe('GET /metrics', () => {
  it('needs the admin token or the metrics token', async () => {
    expect((await scrape()).status).toBe(401);
    expect((await scrape('not-the-right-token-at-all')).status).toBe(401);
    expect((await scrape(METRICS_TOKEN)).status).toBe(200);
    expect((await t.request('/metrics')).status).toBe(200);
    // The metrics token opens nothing else.
    expect(
      (await t.app.request('/api/v1/backups', { headers: { authorization: `Bearer ${METRICS_TOKEN}` } }))
        .status,
    ).toBe(401);
  });

  it('parses as the Prometheus text format and tells backup duration, size, last success and job counts', async () => {
    const filename = await backupNow(t);
    const size = (await t.agent.catalog.info(filename)).size;
    const res = await scrape(METRICS_TOKEN);
    expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const families = parsePrometheusText(await res.text());
    const one = (name: string) => families.get(name)?.samples[0]?.value;

    expect(families.get('gem_backup_backup_duration_seconds')?.type).toBe('histogram');
    const count = families
      .get('gem_backup_backup_duration_seconds')!
      .samples.find((s) => s.name.endsWith('_count'));
    expect(count?.value).toBe(1);
    expect(one('gem_backup_last_backup_size_bytes')).toBe(size);
    expect(one('gem_backup_last_backup_duration_seconds')).toBeGreaterThan(0);
    expect(one('gem_backup_local_backups')).toBe(1);
    const created = Date.parse((await t.agent.catalog.info(filename)).createdAt) / 1000;
    expect(
      families
        .get('gem_backup_destination_last_success_timestamp_seconds')!
        .samples.find((s) => s.labels.destination === 'local')?.value,
    ).toBe(created);
    expect(families.get('gem_backup_jobs_total')!.samples).toEqual([
      { name: 'gem_backup_jobs_total', labels: { kind: 'backup', outcome: 'succeeded' }, value: 1 },
    ]);
    expect(families.get('gem_backup_uploaded_bytes_total')?.type).toBe('counter');
    const health = families.get('gem_backup_health_status')!.samples;
    expect(health.map((s) => s.labels.area).sort()).toEqual(
      ['alerts', 'backups', 'disk', 'dr', 'jobs', 'keys', 'offsite', 'verification'].sort(),
    );
    // Keys never downloaded: a warning (1).
    expect(health.find((s) => s.labels.area === 'keys')?.value).toBe(1);
  }, 60_000);

  it('takes no backup whose verification failed as the last one, as health does not', async () => {
    const good = await backupNow(t);
    const bad = await backupNow(t);
    await t.agent.catalog.updateRecord(bad, { verifyResult: 'failed', verifyError: 'chunk 3 is damaged' });
    const families = parsePrometheusText(await (await scrape(METRICS_TOKEN)).text());
    const goodInfo = await t.agent.catalog.info(good);
    expect(families.get('gem_backup_last_backup_timestamp_seconds')?.samples[0]?.value).toBe(
      Date.parse(goodInfo.createdAt) / 1000,
    );
    expect(families.get('gem_backup_last_backup_size_bytes')?.samples[0]?.value).toBe(goodInfo.size);
    expect(
      families
        .get('gem_backup_destination_last_success_timestamp_seconds')!
        .samples.find((s) => s.labels.destination === 'local')?.value,
    ).toBe(Date.parse(goodInfo.createdAt) / 1000);
  }, 60_000);

  it('leaves out destinations that are turned off, as health does: their last upload no longer alerts', async () => {
    const sftp = {
      enabled: true,
      host: '127.0.0.1',
      port: 2222,
      username: 'gem',
      remotePath: 'gem-backups',
      auth: { password: 'sftp-password-for-the-test' },
      autoUpload: false,
    };
    await t.agent.settings.update({ offsite: { sftp } });
    const day = 86_400_000;
    const success = { at: new Date(Date.now() - 2 * day).toISOString(), backup: 'gem-backup-a', ok: true };
    const state = offsiteServiceFor(t.agent).state;
    await state.recordUpload('sftp', success);
    await state.recordUpload('sftp', {
      at: new Date(Date.now() - day).toISOString(),
      backup: 'gem-backup-b',
      ok: false,
      error: { code: 'unreachable', message: 'Cannot reach the storage' },
    });
    // The cloud slot's records from before Cloud DR was turned off (here it has no cloud URL at all).
    await drServiceFor(t.agent).state.update((s) => {
      s.lastSuccess = { at: success.at, trigger: 'nightly', outcome: 'succeeded', size: 1000 };
      s.lastPush = { at: new Date().toISOString(), trigger: 'nightly', outcome: 'failed' };
    });
    expect((await drServiceFor(t.agent).status()).enabled).toBe(false);
    const destinations = async () => {
      const families = parsePrometheusText(await (await scrape(METRICS_TOKEN)).text());
      const of = (name: string) =>
        Object.fromEntries(families.get(name)!.samples.map((s) => [s.labels.destination, s.value]));
      return {
        ok: of('gem_backup_destination_last_upload_ok'),
        lastSuccess: of('gem_backup_destination_last_success_timestamp_seconds'),
      };
    };

    const on = await destinations();
    expect(on.ok).toEqual({ sftp: 0 });
    expect(on.lastSuccess.sftp).toBe(Date.parse(success.at) / 1000);
    expect(on.lastSuccess.cloud).toBeUndefined();

    await t.agent.settings.update({ offsite: { sftp: { ...sftp, enabled: false } } });
    const off = await destinations();
    expect(off.ok).toEqual({});
    expect(Object.keys(off.lastSuccess)).toEqual(['local']);
  }, 60_000);
});
