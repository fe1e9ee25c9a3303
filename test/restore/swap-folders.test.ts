// The folder part of the swap when something else writes beside it: an undo puts the previous folder back
// whatever took its name meanwhile, so the live folder is never left holding neither state.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recoverInterruptedRestore } from '../../agent/restore/restore';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, leftovers, liveState, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a swap whose live folder is made again while it is set aside', () => {
  it('puts the previous folder back and says the live system is unchanged', async () => {
    const filename = await backupNow(t.agent, 'before');
    await writeFile(join(t.agent.sources.configDir, 'gem.json'), '{"changed":true}\n');
    const before = await liveState(t.agent);
    const live = t.agent.sources.configDir;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: {
        // GEM (restarted by its supervisor when its database went away) makes its config folder again
        // and writes into it, between the swap's two renames: the staged folder cannot take the name.
        afterSwapStep: async (step) => {
          if (step !== 'move-live-folder:config') return;
          await mkdir(live);
          await writeFile(join(live, 'gem.json'), '{"default":true}\n');
        },
      },
    });
    expect(job.state).toBe('failed');
    expect(job.error?.message).toContain('live system is unchanged');
    expect(await liveState(t.agent)).toEqual(before);
    await recoverInterruptedRestore(t.agent);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
  });
});
