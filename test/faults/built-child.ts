/**
 * The crash tests' child processes (test/faults/agent-child.ts, test/restore/crash-child.ts, the CLI, the
 * service) bundled from the current sources by the build itself (scripts/build.mjs, what `npm run build`
 * puts in dist/), into a fresh folder once per test file, never an older dist/; as test/cli/built-cli.ts
 * does for the CLI tests. A child then opens its agent in about 0.5 s instead of 1.3-2.3 s through tsx's
 * loader (which runs every module of the agent and its packages through its hooks); these tests start
 * a child for every kill.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runProcess } from '../../agent/system/spawn';

export interface BuiltChildren<Name extends string> {
  /** Each entry's bundle: `node <path>`. */
  paths: Record<Name, string>;
  remove(): Promise<void>;
}

/** Bundles `entries` (name -> source path from the checkout's root) in one build. */
export async function buildChildren<Name extends string>(
  entries: Record<Name, string>,
): Promise<BuiltChildren<Name>> {
  const root = process.cwd();
  // Inside the checkout: the bundle imports its packages (zod, postgres, ...) from node_modules/.
  const cache = join(root, 'node_modules', '.cache');
  await mkdir(cache, { recursive: true });
  const out = await mkdtemp(join(cache, 'gem-child-test-'));
  const names = Object.keys(entries) as Name[];
  const built = await runProcess(
    process.execPath,
    ['scripts/build.mjs', '--out', out, ...names.map((name) => `${name}=${entries[name]}`)],
    { cwd: root },
  );
  if (built.code !== 0) {
    await rm(out, { recursive: true, force: true });
    throw new Error(`building the test children failed (exit ${built.code}): ${built.stderr}`);
  }
  const paths = Object.fromEntries(names.map((name) => [name, join(out, `${name}.js`)])) as Record<
    Name,
    string
  >;
  return { paths, remove: () => rm(out, { recursive: true, force: true }) };
}
