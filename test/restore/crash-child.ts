/**
 * A separate agent process that restores a backup and dies by SIGKILL at a chosen point: a real crash
 * for crash.test.ts. CRASH_AT is a swap step (killed just before it), a step after the swap's commit
 * (`role-record`, `dr-recovery`: killed just before it), `restart` (killed by the restart command,
 * after the swap), or `undo-after-commit`: the commit step fails after writing its record
 * (as an fsync after the rename would) and the process is killed during the undo that follows, once
 * the folders are back and before the databases are.
 */
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { openAgent } from '../../agent/agent';
import { loadConfig } from '../../agent/config';
import { silentLogger } from '../../agent/log';
import { restoreFromFile } from '../../agent/restore/restore';

const crashAt = process.env.CRASH_AT ?? '';
const agent = await openAgent(loadConfig(), silentLogger);
if (crashAt === 'restart') agent.config.restartCommand = ['kill', '-KILL', String(process.pid)];

/** Kills this process once no folder is set aside beside the scripts folder any more (its undo ran). */
function killOnceFoldersAreBack(): void {
  const parent = dirname(agent.sources.scriptsDir);
  const aside = readdirSync(parent)
    .filter((name) => name.includes('.gem-previous-'))
    .map((name) => join(parent, name));
  if (aside.length === 0) throw new Error('no folder was set aside: nothing to wait for');
  const watch = () => {
    if (aside.every((path) => !existsSync(path))) process.kill(process.pid, 'SIGKILL');
    setImmediate(watch);
  };
  setImmediate(watch);
}

const job = await agent.jobs.start(
  'restore',
  (ctx) =>
    restoreFromFile(agent, ctx, process.env.BACKUP_PATH ?? '', {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: (step) => {
          if (step === crashAt) process.kill(process.pid, 'SIGKILL');
        },
        afterSwapStep: (step) => {
          if (crashAt !== 'undo-after-commit' || step !== 'commit') return;
          killOnceFoldersAreBack();
          throw new Error('injected: the commit record was written, its fsync failed');
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
