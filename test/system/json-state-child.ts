/**
 * A process beside the test that updates one state file (test/system/json-state.test.ts): it says
 * `ready`, waits for a line on stdin (so that all start together), adds 1 to `n` COUNT times through
 * JsonStateFile.update, says `done` and exits.
 */
import { once } from 'node:events';
import { JsonStateFile } from '../../agent/system/json-state';

const [path, count] = process.argv.slice(2);
const state = new JsonStateFile<{ n: number }>(path!, () => ({ n: 0 }));
process.stdout.write('ready\n');
await once(process.stdin, 'data');
for (let i = 0; i < Number(count); i++) {
  await state.update((s) => {
    s.n += 1;
  });
}
process.stdout.write('done\n');
process.exit(0);
