// A process for test/system/pid-namespace.test.ts, run in its own PID namespace (unshare -p -f). It
// reports one JSON line on stdout, then (except `take`) lives until it is killed or its stdin closes.
//   hold <lock> <heartbeatMs>: takes the lock and holds it.
//   take <lock>: tries the lock once and reports whether it got it.
//   write <file> <heartbeatMs>: writes <file> through writeFileAtomic from a source that never ends.
//   work <root> <heartbeatMs>: makes its work folder under <root> and keeps it.
//   job <dataDir> <heartbeatMs>: runs a restore job that never ends, recorded in <dataDir>/jobs.json
//     and holding <dataDir>/job.lock, as a gem-backup command does.
//   verify <dataDir> <heartbeatMs>: runs a verify job (non-mutating: no job lock) that never ends and
//     reports no progress, recorded in <dataDir>/jobs.json, as `gem-backup verify` does.
import { readlinkSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { PassThrough } from 'node:stream';
import { JobHistory } from '../../agent/jobs/history';
import { acquireLock, lockTiming } from '../../agent/jobs/lock';
import { JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { processWorkFolder, tempTiming, writeFileAtomic } from '../../agent/system/atomic-file';

const [mode = '', path = '', heartbeat] = process.argv.slice(2);
const ns = readlinkSync('/proc/self/ns/pid');
const report = (fields: Record<string, unknown>) =>
  process.stdout.write(`${JSON.stringify({ pid: process.pid, ns, ...fields })}\n`);
if (heartbeat) {
  lockTiming.heartbeatMs = Number(heartbeat);
  tempTiming.heartbeatMs = Number(heartbeat);
}
/** Lives until killed, or until the test process is gone (its end of stdin closes). */
const forever = () => {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
};

if (mode === 'hold') {
  await acquireLock(path, 'restore');
  report({ held: true });
  forever();
} else if (mode === 'take') {
  try {
    const release = await acquireLock(path, 'backup');
    await release();
    report({ got: true });
  } catch (error) {
    report({ got: false, code: (error as { code?: string }).code, message: (error as Error).message });
  }
  process.exit(0);
} else if (mode === 'write') {
  const source = new PassThrough();
  source.write('begin ');
  void writeFileAtomic(path, [source]);
  // Reported once its temp file is there (however loaded the machine), not after a fixed wait.
  while (!(await readdir(dirname(path))).some((name) => name.startsWith('.tmp-'))) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  report({ writing: true });
  forever();
} else if (mode === 'work') {
  const folder = processWorkFolder(path);
  await mkdir(folder, { recursive: true });
  report({ folder });
  forever();
} else if (mode === 'job' || mode === 'verify') {
  const runner = new JobRunner({
    lockPath: `${path}/job.lock`,
    log: silentLogger,
    history: new JobHistory(`${path}/jobs.json`, silentLogger),
  });
  const phase = mode === 'job' ? 'stage' : 'read';
  const job = await runner.start(
    mode === 'job' ? 'restore' : 'verify',
    async (ctx) => {
      ctx.phase(phase);
      await new Promise(() => {});
    },
    { mutating: mode === 'job' },
  );
  // Reported once the file shows it at its phase.
  while (
    !(await new JobHistory(`${path}/jobs.json`, silentLogger).entries()).some((e) => e.job.phase === phase)
  ) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  report({ job: job.id });
  forever();
} else {
  throw new Error(`unknown mode ${mode}`);
}
