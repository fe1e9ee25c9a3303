// A process recording jobs in a shared jobs.json as a job runner does: its whole view, saved at each
// job's start, each phase and its end. Before each save it looks whether the file still holds every
// job it saved so far (another process's write from a stale read drops them). Args: the file, a name
// for its jobs, how many jobs. Prints how many times a job of its own was found missing.
import { type HistoryEntry, JobHistory } from '../../agent/jobs/history';
import { createLogger } from '../../agent/log';

const [path, name, count] = process.argv.slice(2) as [string, string, string];
const history = new JobHistory(path, createLogger({ level: 'error' }));
const runner = `${name}-runner`;
const mine: HistoryEntry[] = [];
let missing = 0;

async function save(): Promise<void> {
  const there = new Set((await history.entries()).map((e) => e.job.id));
  missing += mine.filter((e) => e.job.phase !== 'starting' && !there.has(e.job.id)).length;
  await history.save(mine);
}

for (let i = 0; i < Number(count); i++) {
  const job: HistoryEntry['job'] = {
    id: `${name}-${i}`,
    kind: 'backup',
    state: 'running',
    phase: 'starting',
    bytesDone: 0,
    bytesTotal: 0,
    unit: 'bytes',
    startedAt: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
  };
  mine.push({ pid: process.pid, runner, job });
  for (const phase of ['starting', 'dump', 'pack', 'verify']) {
    job.phase = phase;
    await save();
  }
  job.state = 'succeeded';
  job.endedAt = new Date().toISOString();
  await save();
}
process.stdout.write(`${JSON.stringify({ missing })}\n`);
