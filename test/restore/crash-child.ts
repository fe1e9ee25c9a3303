/** A separate agent process that restores a backup and dies by SIGKILL at a chosen point: a real crash for crash.test.ts. */
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { restoreFromFile } from '../../agent/restore/restore';

const crashAt = process.env.CRASH_AT ?? '';
const agent = await openAgent(loadConfig(), silentLogger);
if (crashAt === 'restart') agent.config.restartCommand = ['kill', '-KILL', String(process.pid)];
const job = await agent.jobs.start(
  'restore',
  (ctx) =>
    restoreFromFile(agent, ctx, process.env.BACKUP_PATH ?? '', {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: (step) => {
          if (step === crashAt) process.kill(process.pid, 'SIGKILL');
        },
      },
    }),
  { mutating: true },
);
const done = await agent.jobs.waitFor(job.id);
process.stdout.write(`${JSON.stringify(done)}\n`);
await agent.close();
