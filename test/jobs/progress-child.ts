// A process running a job as a gem-backup command does, for test/jobs/other-process.test.ts: its own
// job runner over <dir>/jobs.json and <dir>/job.lock. The job (a backup) enters its `dump` phase with
// a total of 1000 and, once the file shows that phase at 0 (so the phase's own write holds no progress),
// moves its progress a step every 5 ms up to 999, then stays there; it never ends. Reports {job} on
// stdout once it moves, then lives until killed or its stdin closes. A second argument spaces its
// progress writes (the runner's progressSaveMs) instead of the product's 2 s.
import { JobHistory } from '../../agent/jobs/history';
import { lockTiming } from '../../agent/jobs/lock';
import { JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';

const [dir = '', progressSaveMs] = process.argv.slice(2);
// The job's heartbeat writes its progress too: left out here, so that only the progress's own writes count.
lockTiming.heartbeatMs = 3_600_000;
const history = new JobHistory(`${dir}/jobs.json`, silentLogger);
const runner = new JobRunner({
  lockPath: `${dir}/job.lock`,
  log: silentLogger,
  history,
  ...(progressSaveMs ? { progressSaveMs: Number(progressSaveMs) } : {}),
});
// The file's only job, at its phase.
const atPhase = async () => (await history.entries()).some((e) => e.job.phase === 'dump');
let moving = () => {};
const moves = new Promise<void>((resolve) => (moving = resolve));
const job = await runner.start('backup', async (ctx) => {
  ctx.phase('dump', 1000);
  while (!(await atPhase())) await new Promise((resolve) => setTimeout(resolve, 10));
  moving();
  for (let done = 1; ; done = Math.min(done + 1, 999)) {
    ctx.progress(done);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
});
await moves;
process.stdout.write(`${JSON.stringify({ job: job.id })}\n`);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
