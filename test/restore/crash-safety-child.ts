/**
 * A separate agent process that restores a backup WITH its safety backup and dies by SIGKILL at a
 * chosen point (for crash-safety.test.ts): CRASH_AT is a step before the swap (`copy-settings`: killed
 * just before it), a swap step, or one after the swap's commit (`role-record`: killed just before it).
 * With HOLD=1 it stops there instead, still running and holding the job lock, and prints `holding`
 * (the test kills it).
 */
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { restoreFromFile } from '../../agent/restore/restore';

const crashAt = process.env.CRASH_AT ?? '';
const agent = await openAgent(loadConfig(), silentLogger);
const job = await agent.jobs.start(
  'restore',
  (ctx) =>
    restoreFromFile(agent, ctx, process.env.BACKUP_PATH ?? '', {
      faults: {
        beforeSwapStep: async (step) => {
          if (step !== crashAt) return;
          if (process.env.HOLD !== '1') process.kill(process.pid, 'SIGKILL');
          process.stdout.write('holding\n');
          await new Promise(() => setInterval(() => {}, 60_000));
        },
        afterCommit: (step) => {
          if (step === crashAt) process.kill(process.pid, 'SIGKILL');
        },
      },
    }),
  { mutating: true },
);
const done = await agent.jobs.waitFor(job.id);
process.stdout.write(`${JSON.stringify(done)}\n`);
await agent.close();
