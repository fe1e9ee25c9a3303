/**
 * The CLI as the CLI tests run it: agent/cli.ts bundled from the current sources by the build itself
 * (scripts/build.mjs, what `npm run build` puts in dist/ and the package bin runs), into a fresh folder
 * once per test file, never an older dist/. A command then starts in 0.15-0.9 s instead of 1.3-1.5 s
 * through tsx's loader, which runs every module of the agent and its packages through its hooks; the
 * tests spawn some forty commands each. The bin's own choice (dist/ or tsx) is tested on its own.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runProcess } from '../../agent/system/spawn';

export interface BuiltCli {
  /** The bundled CLI's entry point: `node <path> <command>`. */
  path: string;
  remove(): Promise<void>;
}

export async function buildCli(): Promise<BuiltCli> {
  const root = process.cwd();
  // Inside the checkout: the bundle imports its packages (zod, postgres, ...) from node_modules/.
  const cache = join(root, 'node_modules', '.cache');
  await mkdir(cache, { recursive: true });
  const out = await mkdtemp(join(cache, 'gem-cli-test-'));
  const built = await runProcess(process.execPath, ['scripts/build.mjs', '--out', out, 'cli=agent/cli.ts'], {
    cwd: root,
  });
  if (built.code !== 0) throw new Error(`building the CLI failed (exit ${built.code}): ${built.stderr}`);
  return { path: join(out, 'cli.js'), remove: () => rm(out, { recursive: true, force: true }) };
}
