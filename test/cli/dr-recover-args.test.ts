// `gem-backup dr recover` with the installation id typed without its option: the refusal names the
// argument as ID, never the id itself (the DR recovery credential; stderr may go to a log).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProcess } from '../../agent/system/spawn';
import { startAll } from '../services/start-all';
import { type BuiltCli, buildCli } from './built-cli';

let built: BuiltCli;

beforeAll(async () => {
  ({ built } = await startAll({ built: buildCli }));
});
afterAll(async () => {
  await built?.remove();
});

describe('dr recover with a misplaced installation id', () => {
  it('refuses it without repeating the id', async () => {
    const id = '9ebf5135b0630078788c892f21762d3c';
    const env = { ...process.env, GEM_DATA_DIR: '/nonexistent/gem-dr-args' };
    for (const typed of [id, id.toUpperCase(), '9EBF5135 B0630078 788C892F 21762D3C']) {
      const res = await runProcess(process.execPath, [built.path, 'dr', 'recover', typed], { env });
      expect(res.code).toBe(1);
      expect(res.stderr.trim()).toBe(
        "gem-backup: Unexpected argument 'ID'. This command does not take positional arguments",
      );
    }
    // Anything else is quoted as typed.
    const other = await runProcess(process.execPath, [built.path, 'dr', 'recover', '--installation'], {
      env,
    });
    expect(other.stderr.trim()).toBe("gem-backup: Unknown option '--installation'");
  });
});
