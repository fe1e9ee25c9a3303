/**
 * The CLI as the CLI tests run it: agent/cli.ts bundled from the current sources by the build itself
 * (scripts/build.mjs, what `npm run build` puts in dist/ and the package bin runs), never an older
 * dist/: once per test run (test/services/run-builds.ts), shared by the files of the run. A command
 * then starts in 0.15-0.9 s instead of 1.3-1.5 s through tsx's loader, which runs every module of the
 * agent and its packages through its hooks; the tests spawn some forty commands each. The bin's own
 * choice (dist/ or tsx) is tested on its own.
 */
import { join } from 'node:path';
import { runProcess } from '../../agent/system/spawn';
import { buildOnce } from '../services/run-builds';

export interface BuiltCli {
  /** The bundled CLI's entry point: `node <path> <command>`. */
  path: string;
  /** Removes a bundle built for this file alone (none when the run shares one). */
  remove(): Promise<void>;
}

export async function buildCli(): Promise<BuiltCli> {
  const root = process.cwd();
  // Inside the checkout: the bundle imports its packages (zod, postgres, ...) from node_modules/.
  const { dir, remove } = await buildOnce(
    'cli',
    async (out) => {
      const built = await runProcess(
        process.execPath,
        ['scripts/build.mjs', '--out', out, 'cli=agent/cli.ts'],
        {
          cwd: root,
        },
      );
      if (built.code !== 0) throw new Error(`building the CLI failed (exit ${built.code}): ${built.stderr}`);
    },
    join(root, 'node_modules', '.cache'),
  );
  return { path: join(dir, 'cli.js'), remove };
}
