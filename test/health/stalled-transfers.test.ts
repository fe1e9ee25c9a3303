// A job whose transfers hang one after another is stalled, though each new transfer enters a new phase:
// only work done (bytes, items, rows) counts as progress for the watchdog. The scheduled verification
// reads the newest copy at SFTP, then at SMB; real sshd and smbd are frozen (SIGSTOP) as each read
// begins, so each one hangs until the provider gives up. The stall window lies between the two hangs:
// longer than the SMB one, so a watchdog that took the move to "verify smb" for progress would let the
// job end unflagged, shorter than both together.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import type { Job } from '../../agent/jobs/runner';
import { offsiteServiceFor } from '../../agent/offsite/service';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { until } from '../services/wait';
import { backupNow, call, downloadKeys, sftpSection } from './helpers';

let pg: TestPostgres;
let sshd: SshdService;
let smbd: SmbdService;
let t: TestAgent;
const paused = new Set<SshdService | SmbdService>();

function resumeAll(): void {
  for (const service of paused) service.resume();
  paused.clear();
}

beforeAll(async () => {
  ({ pg, sshd, smbd } = await startAll({ pg: startPostgres, sshd: startSshd, smbd: startSmbd }));
  t = await startTestAgent(pg, { modules: [healthModule] });
  // A frozen SFTP server is given up after its missed keepalives (~6 s), a frozen smbd after smbclient's
  // 2 s request timeout (under 5 s in all); no progress for 5 s is a stall, a run of a minute is not.
  offsiteServiceFor(t.agent, {
    retry: { attempts: 1 },
    providerOverrides: { sftp: { timeoutMs: 2000 }, smb: { timeoutSeconds: 2 } },
  });
  healthFor(t.agent, { watchdog: { noProgressMs: 5000, minRunMs: 60_000 }, offsiteProbeIntervalMs: 0 });
  await downloadKeys(t);
}, 120_000);

afterAll(async () => {
  resumeAll();
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), smbd?.stop()]);
});

describe('the job watchdog and hung transfers', () => {
  it('flags a job whose transfers hang one after another, whatever phase it moved on to', async () => {
    await backupNow(t);
    await t.agent.settings.update({
      offsite: {
        sftp: sftpSection(sshd, 'gem-backups'),
        smb: { enabled: true, ...smbOptionsFor(smbd, '/gem-backups/'), autoUpload: false },
      },
    });
    // A copy at each destination, for the verification to read.
    const offsite = offsiteServiceFor(t.agent);
    for (const kind of ['sftp', 'smb'] as const) {
      const sync = await t.agent.jobs.waitFor((await offsite.startSync(kind)).id);
      expect(sync.state, JSON.stringify(sync.error)).toBe('succeeded');
    }

    // Each server freezes as its copy's read begins (its listing went through).
    const phases: string[] = [];
    const off = t.agent.jobs.subscribeAll((event) => {
      if (event.type !== 'update' || event.job.kind !== 'verification') return;
      if (phases.at(-1) !== event.job.phase) phases.push(event.job.phase);
      const frozen = { 'verify sftp': sshd, 'verify smb': smbd }[event.job.phase];
      if (frozen && !paused.has(frozen)) {
        frozen.pause();
        paused.add(frozen);
      }
    });
    let ended: Job;
    try {
      const started = await call(t, 'POST', '/health/verification/run');
      expect(started.status).toBe(202);
      const jobId = started.body.jobId as string;
      // The SFTP read was given up, the job went on to the SMB copy: from here on it must show as stalled.
      await until(async () => paused.has(smbd), 'the SMB read to begin', 600);
      let status: unknown;
      let found: Record<string, unknown> | undefined;
      await until(
        async () => {
          const { jobs } = (await call(t, 'GET', '/health')).body.areas;
          status = jobs.status;
          found = (jobs.stalled as Array<Record<string, unknown>>).find((s) => s.id === jobId);
          if (!found && t.agent.jobs.get(jobId)?.endedAt)
            throw new Error(`the job ended unflagged (phases ${phases})`);
          return found !== undefined;
        },
        'the watchdog to flag the job',
        600,
      );
      expect(status).toBe('failing');
      expect(found).toMatchObject({ kind: 'verification', phase: 'verify smb' });
      expect(found!.reason).toMatch(/made no progress/);
      // Both reads are given up (the servers still frozen), and the job ends.
      ended = await t.agent.jobs.waitFor(jobId);
    } finally {
      off();
      resumeAll();
    }
    expect(phases.slice(-2)).toEqual(['verify sftp', 'verify smb']);
    expect(ended.state).toBe('failed');
    expect(ended.error?.message).toMatch(/sftp .*; smb /);
    // Ended: no longer stalled.
    expect((await call(t, 'GET', '/health')).body.areas.jobs.status).toBe('ok');
  }, 120_000);
});
