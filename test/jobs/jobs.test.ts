import { mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { openAgent } from '../../agent/agent';
import type { Job } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { tempDirForTest } from '../services/temp-dir';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  // Enough data that a backup takes a few seconds: time to cancel it in the middle.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table filler as select g, md5(g::text) || md5((g+1)::text) as t from generate_series(1, 600000) g`,
    ),
  );
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

async function readEvents(res: Response): Promise<Array<{ event: string; data: Record<string, unknown> }>> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((block) => block.includes('data:'))
    .map((block) => {
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}') as Record<string, unknown>;
      return { event, data };
    });
}

describe('jobs', () => {
  it('streams a backup job as server-sent events: phases in order, ending with the final state', async () => {
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const { jobId } = (await res.json()) as { jobId: string };
    const events = await readEvents(await t.request(`/api/v1/jobs/${jobId}/events`));
    const jobs = events.filter((e) => e.event === 'job').map((e) => e.data);
    const phases = [...new Set(jobs.map((j) => j.phase))];
    expect(phases).toEqual(expect.arrayContaining(['dump', 'folders', 'pack', 'verify', 'done']));
    expect(phases.indexOf('dump')).toBeLessThan(phases.indexOf('pack'));
    expect(phases.indexOf('pack')).toBeLessThan(phases.indexOf('verify'));
    expect(jobs.at(-1)).toMatchObject({ id: jobId, kind: 'backup', state: 'succeeded' });
    const record = (await (await t.request(`/api/v1/jobs/${jobId}`)).json()) as Record<string, unknown>;
    expect(record).toMatchObject({ state: 'succeeded', phase: 'done' });
    expect(typeof record.endedAt).toBe('string');
  });

  it('cancels a running backup cleanly: state cancelled, no new backup, no temp files, the lock released', async () => {
    const before = await readdir(t.agent.paths.backups);
    const res = await t.request('/api/v1/backups', { method: 'POST' });
    const { jobId } = (await res.json()) as { jobId: string };
    await new Promise<void>((resolve) => {
      const off = t.agent.jobs.subscribe(jobId, (e) => {
        if (e.job.phase === 'dump' && e.job.bytesDone > 0) {
          off();
          resolve();
        }
      });
    });
    const cancel = await t.request(`/api/v1/jobs/${jobId}/cancel`, { method: 'POST' });
    expect(cancel.status).toBe(200);
    expect(((await cancel.json()) as { phase: string }).phase).toBe('cancelling');
    const job = await t.agent.jobs.waitFor(jobId);
    expect(job.state).toBe('cancelled');
    // Once it ended, the job shows the step it stopped in, not a `cancelling` that never ends.
    const ended = (await (await t.request(`/api/v1/jobs/${jobId}`)).json()) as {
      phase: string;
      state: string;
    };
    expect(ended).toMatchObject({ state: 'cancelled', phase: 'dump' });
    expect(await readdir(t.agent.paths.backups)).toEqual(before);
    expect(await readdir(t.agent.paths.work).catch(() => [])).toEqual([]);
    // The lock is free again: the next backup starts.
    const next = await t.request('/api/v1/backups', { method: 'POST' });
    expect(next.status).toBe(202);
    await t.agent.jobs.waitFor(((await next.json()) as { jobId: string }).jobId);
  });

  it("replays a running job's earlier notices to a stream that opens late (a reloaded page), the latest of each", async () => {
    let finish!: () => void;
    const held = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const job = await t.agent.jobs.start(
      'verify',
      async (ctx) => {
        ctx.notice('dr-push-backup', { backup: 'first' });
        ctx.notice('restore-swap');
        ctx.notice('dr-push-backup', { backup: 'second' });
        await held;
      },
      { mutating: false },
    );
    await expect.poll(() => t.agent.jobs.noticesOf(job.id).length).toBe(2);
    // The job ends once the stream has sent the replay; without a replay, after 10 s (the test then
    // fails on what it read, and the job does not outlive it).
    const giveUp = setTimeout(finish, 10_000);
    onTestFinished(() => {
      clearTimeout(giveUp);
      finish();
    });
    const res = await t.request(`/api/v1/jobs/${job.id}/events`);
    const reader = res.body!.getReader();
    let text = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      text += new TextDecoder().decode(chunk.value);
      if (text.includes('event: dr-push-backup')) finish();
    }
    const events = await readEvents(new Response(text));
    expect(events.map((e) => e.event)).toEqual(['job', 'restore-swap', 'dr-push-backup', 'job']);
    expect(events[1]!.data).toMatchObject({ data: null, job: { id: job.id, state: 'running' } });
    expect(events[2]!.data).toMatchObject({ data: { backup: 'second' } });
    expect(events[3]!.data).toMatchObject({ state: 'succeeded' });
    // Once the job has ended there is nothing to replay, and nothing kept.
    expect(t.agent.jobs.noticesOf(job.id)).toEqual([]);
    const after = await readEvents(await t.request(`/api/v1/jobs/${job.id}/events`));
    expect(after.map((e) => e.event)).toEqual(['job']);
  });

  it('sends the last progress a job reports even when it came too soon after the one before (throttled, not dropped)', async () => {
    let finish!: () => void;
    const held = new Promise<void>((resolve) => {
      finish = resolve;
    });
    onTestFinished(() => finish());
    const seen: number[] = [];
    let report!: (done: number) => void;
    const job = await t.agent.jobs.start(
      'verify',
      async (ctx) => {
        ctx.phase('verify', 100);
        report = (done) => ctx.progress(done);
        await held;
      },
      { mutating: false },
    );
    const off = t.agent.jobs.subscribe(job.id, (e) => {
      if (e.job.phase === 'verify') seen.push(e.job.bytesDone);
    });
    onTestFinished(off);
    await expect.poll(() => report).toBeDefined();
    // Two reports in one go, then nothing (a stalled upload): the second must still reach the listeners.
    report(10);
    report(20);
    await expect.poll(() => seen.at(-1), { timeout: 5000 }).toBe(20);
    expect(t.agent.jobs.get(job.id)?.state).toBe('running');
    finish();
    await t.agent.jobs.waitFor(job.id);
  });

  it('answers every field API.md lists for a running job, endedAt null until it ends', async () => {
    let finish!: () => void;
    const held = new Promise<void>((resolve) => {
      finish = resolve;
    });
    onTestFinished(() => finish());
    const job = await t.agent.jobs.start('verify', () => held, { mutating: false });
    const fields = ['id', 'kind', 'state', 'phase', 'bytesDone', 'bytesTotal', 'startedAt', 'endedAt'];
    const running = (answer: unknown) => {
      expect(Object.keys(answer as object)).toEqual(expect.arrayContaining(fields));
      expect(answer).toMatchObject({ id: job.id, endedAt: null });
    };
    running(
      ((await (await t.request('/api/v1/jobs')).json()) as unknown[]).find((j) => (j as Job).id === job.id),
    );
    running(await (await t.request(`/api/v1/jobs/${job.id}`)).json());
    const res = await t.request(`/api/v1/jobs/${job.id}/events`);
    const reader = res.body!.getReader();
    let text = '';
    while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
    running((await readEvents(new Response(text)))[0]!.data);
    await reader.cancel();
    running(await (await t.request(`/api/v1/jobs/${job.id}/cancel`, { method: 'POST' })).json());
    finish();
    await t.agent.jobs.waitFor(job.id);
    const ended = (await (await t.request(`/api/v1/jobs/${job.id}`)).json()) as { endedAt: unknown };
    expect(typeof ended.endedAt).toBe('string');
  });

  it('answers 404 for an unknown job and 409 when cancelling a finished one', async () => {
    expect((await t.request('/api/v1/jobs/nope')).status).toBe(404);
    const [done] = t.agent.jobs.list();
    expect((await t.request(`/api/v1/jobs/${done!.id}/cancel`, { method: 'POST' })).status).toBe(409);
  });

  it('writes every access to a backup or key route to the audit log, with its outcome', async () => {
    await t.request('/api/v1/backups');
    await t.request('/api/v1/backups/not-a-backup-name');
    await t.agent.audit.flush();
    const lines = (await readFile(t.agent.paths.audit, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(
      expect.objectContaining({ method: 'GET', route: '/api/v1/backups', status: 200, outcome: 'ok' }),
    );
    expect(lines).toContainEqual(
      expect.objectContaining({ route: '/api/v1/backups/not-a-backup-name', outcome: 'error' }),
    );
    expect(lines.every((l) => typeof l.time === 'string')).toBe(true);
  });
});

describe('after a crash', () => {
  it('removes what a dead process left (temp files of backups and state files, its work folder, SMB temp folders) at the next start, keeps what a live one writes, and lists only complete backups', async () => {
    const dir = t.agent.paths.backups;
    const listed = (await t.agent.catalog.list()).map((b) => b.filename);
    // What a process killed mid-job leaves: temp files and a work folder named after its pid (one
    // above the kernel's pid limit, so certainly dead), and one temp file this process is writing.
    const dead = 4_194_305;
    const workRoot = join(t.agent.config.dataDir, 'work');
    await writeFile(join(dir, `.tmp-gem-backup-2026-01-01-000000.tar.gz.p${dead}.abc123`), 'half a backup');
    await writeFile(join(dir, '.tmp-gem-backup-2026-01-01-000001.tar.gz.abc123'), 'an old one, no owner');
    const live = `.tmp-gem-backup-2026-01-01-000002.tar.gz.p${process.pid}.abc123`;
    await writeFile(join(dir, live), 'an upload still arriving');
    // Beside the state files: a temp copy of one a dead process did not rename, and one this process writes.
    const dataDir = t.agent.config.dataDir;
    await writeFile(join(dataDir, `.tmp-dr-state.json.p${dead}.abc123`), '{"half":');
    const liveState = `.tmp-offsite.json.p${process.pid}.abc123`;
    await writeFile(join(dataDir, liveState), '{}');
    await mkdir(join(workRoot, `p${dead}`, '.tmp-backup-xyz'), { recursive: true });
    await writeFile(join(workRoot, `p${dead}`, '.tmp-backup-xyz', 'database.dump'), 'partial dump');
    // In the temp dir (a private one: TMPDIR, which os.tmpdir() reads): an SMB password file and a
    // spooled backup of the dead process, one of this process (an upload under way), and an unowned
    // auth folder of an earlier version, two hours old.
    const temp = await tempDirForTest('gem-jobs-tmpdir-');
    const savedTmpdir = process.env.TMPDIR;
    process.env.TMPDIR = temp;
    const smb = {
      deadAuth: `gem-smb-auth.p${dead}.aB3dE6`,
      deadSpool: `gem-smb-spool.p${dead}.xY7zQ2`,
      liveAuth: `gem-smb-auth.p${process.pid}.Lv1Ab2`,
      oldUnowned: 'gem-smb-Q9w8E7',
    };
    for (const name of Object.values(smb)) {
      await mkdir(join(temp, name), { mode: 0o700 });
      await writeFile(join(temp, name, 'auth'), 'password = secret\n', { mode: 0o600 });
    }
    // A password that begins with a blank has a file of its own beside the auth file.
    await writeFile(join(temp, smb.deadAuth, 'password'), ' secret\n', { mode: 0o600 });
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    await utimes(join(temp, smb.oldUnowned), twoHoursAgo, twoHoursAgo);
    const reopened = await openAgent(t.agent.config, silentLogger).finally(() => {
      if (savedTmpdir === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmpdir;
    });
    try {
      expect((await readdir(dir)).filter((f) => f.startsWith('.tmp-'))).toEqual([live]);
      expect(await readdir(workRoot)).not.toContain(`p${dead}`);
      expect((await readdir(dataDir)).filter((f) => f.startsWith('.tmp-'))).toEqual([liveState]);
      expect((await reopened.catalog.list()).map((b) => b.filename)).toEqual(listed);
      expect(await readdir(temp)).toEqual([smb.liveAuth]);
    } finally {
      await reopened.close();
      await rm(join(dir, live), { force: true });
      await rm(join(dataDir, liveState), { force: true });
    }
  });
});
