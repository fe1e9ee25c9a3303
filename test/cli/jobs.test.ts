// A job the CLI runs beside a running agent (`gem-backup create` over SSH while the service runs) shows
// in the agent's GET /jobs, the page's list: while it runs (its progress as last written, read-only: a cancel from
// the page says to stop it where it runs), and once done, with its result. The CLI opens the agent in
// its own process, with its own job runner: the two share only the data dir's jobs.json.
import { type ChildProcess, spawn } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import type { Job } from '../../agent/jobs/runner';
import { seededEnvironment, startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';
import { within } from '../services/wait';
import { type BuiltCli, buildCli } from './built-cli';

let pg: TestPostgres;
let built: BuiltCli;
let dataDir: string;
let env: NodeJS.ProcessEnv;
/** The agent, as the service runs it, on the CLI's data dir and database (open the whole file). */
let t: TestAgent;

interface Run {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

function startCli(...args: string[]): Run {
  const child = spawn(process.execPath, [built.path, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d));
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  const exited = new Promise<Awaited<Run['exited']>>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, exited };
}

async function jobs(): Promise<Job[]> {
  const res = await t.request('/api/v1/jobs');
  expect(res.status).toBe(200);
  return (await res.json()) as Job[];
}

/** The backup job GET /jobs lists as running that this agent did not start; fails after 30 s. */
async function runningCliBackup(known: Set<string>, run: Run): Promise<Job> {
  let exited = false;
  void run.exited.then(() => (exited = true));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !exited) {
    const found = (await jobs()).find((j) => j.kind === 'backup' && !known.has(j.id) && !j.endedAt);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 20));
  }
  const { stdout, stderr } = await run.exited;
  throw new Error(`GET /jobs never listed the CLI's backup as running (CLI: ${stdout} ${stderr})`);
}

/** The events of a job as the page reads them: every `job` record until the stream ends. */
async function eventsOf(id: string): Promise<Job[]> {
  const res = await t.request(`/api/v1/jobs/${id}/events`);
  expect(res.status).toBe(200);
  const text = await within(res.text(), 120_000, 'the events stream to end with the job');
  return text
    .split('\n\n')
    .map((record) => ({
      event: /^event: (.*)$/m.exec(record)?.[1],
      data: /^data: (.*)$/m.exec(record)?.[1],
    }))
    .filter((r) => r.event === 'job' && r.data)
    .map((r) => JSON.parse(r.data!) as Job);
}

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: startPostgres, built: buildCli }));
  ({ dataDir, env } = await seededEnvironment(pg, 'gem-cli-jobs-'));
  env = { ...env, NODE_ENV: 'test' };
  t = await startTestAgent(pg, {
    dataDir,
    databaseUrl: env.DATABASE_URL!,
    env: { GEM_SCRIPTS_DIR: env.GEM_SCRIPTS_DIR!, GEM_CONFIG_DIR: env.GEM_CONFIG_DIR! },
  });
  // Enough data that the CLI's backup runs for a while after GET /jobs first lists it (~0.4 s on a 2-core
  // box, many times the few in-process requests in between); more only makes its three backups slower.
  await withSql(env.DATABASE_URL!, async (sql) => {
    await sql`create table public.bulk as select g as id, repeat(md5(g::text), 8) as payload from generate_series(1, 200000) g`;
  });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('a job of the CLI run beside the agent', () => {
  it('is listed by GET /jobs while it runs and once done; its events follow it; a cancel says where to stop it', async () => {
    const known = new Set((await jobs()).map((j) => j.id));
    const run = startCli('create', '--label', 'from the shell');
    const running = await runningCliBackup(known, run);
    expect(running).toMatchObject({ kind: 'backup', state: 'running' });

    const one = await t.request(`/api/v1/jobs/${running.id}`);
    expect(one.status).toBe(200);
    expect(((await one.json()) as Job).id).toBe(running.id);

    // The page's Cancel cannot stop another process's job: it says so, and the job goes on.
    const cancel = await t.request(`/api/v1/jobs/${running.id}/cancel`, { method: 'POST' });
    expect(cancel.status).toBe(422);
    const refusal = (await cancel.json()) as { error: { message: string } };
    expect(refusal.error.message).toBe(
      `this job runs in another process on this machine (pid ${run.child.pid}, a gem-backup command): stop it there, with Ctrl-C`,
    );

    // The page's progress dialog: the stream follows the job to its end.
    const events = await eventsOf(running.id);
    expect(events[0]).toMatchObject({ id: running.id, state: 'running' });
    expect(events.at(-1)).toMatchObject({ id: running.id, state: 'succeeded', phase: 'done' });

    const ended = await within(run.exited, 60_000, 'the CLI to exit');
    expect(ended.code, ended.stderr).toBe(0);
    const filename = /^created (\S+\.tar\.gz) /.exec(ended.stdout)?.[1];
    expect(filename, ended.stdout).toBeDefined();

    // Once done: in the list, newest first, with its result, as a job of the agent's own would be.
    const listed = await jobs();
    expect(listed[0]).toMatchObject({ id: running.id, kind: 'backup', state: 'succeeded' });
    expect((listed[0]!.result as { backup: { filename: string } }).backup.filename).toBe(filename);
    const done = await t.request(`/api/v1/jobs/${running.id}`);
    expect(((await done.json()) as Job).endedAt).toBeDefined();
    // An ended job of another process: the cancel answers as for any ended job.
    const cancelEnded = await t.request(`/api/v1/jobs/${running.id}/cancel`, { method: 'POST' });
    expect(cancelEnded.status).toBe(409);
    expect(((await cancelEnded.json()) as { error: { message: string } }).error.message).toBe(
      `job ${running.id} has already ended (succeeded)`,
    );

    // The agent's own jobs and the CLI's side by side: a backup the agent runs is listed above it.
    const mine = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
    expect(mine.state, mine.error?.message).toBe('succeeded');
    expect((await jobs()).slice(0, 2).map((j) => j.id)).toEqual([mine.id, running.id]);
  });

  it('a CLI job whose process was killed is listed as failed `interrupted`, naming the process', async () => {
    const known = new Set((await jobs()).map((j) => j.id));
    const run = startCli('create');
    const running = await runningCliBackup(known, run);
    run.child.kill('SIGKILL');
    await within(run.exited, 30_000, 'the killed CLI to exit');
    const listed = (await jobs()).find((j) => j.id === running.id);
    expect(listed).toMatchObject({ kind: 'backup', state: 'failed', error: { code: 'interrupted' } });
    expect(listed!.error!.message).toBe(
      `The process that ran this backup job (pid ${run.child.pid}) stopped before it ended: it did not finish. Run it again if it is still needed.`,
    );
    expect(listed!.endedAt).toBeDefined();
    // What the killed CLI left (its temp file and job lock) is for the next start's clean-up; no backup was added.
    expect((await readdir(join(dataDir, 'backups'))).filter((n) => n.endsWith('.tar.gz'))).toHaveLength(2);
  });
});
