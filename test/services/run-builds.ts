/**
 * Bundles a test run builds once, not once per test file: the CLI (test/cli/built-cli.ts) and the DR
 * Worker (test/services/dr-cloud.ts, test/cloud/harness.ts), each built from the current sources by
 * the first file that asks and taken as it is by every later file of the same run, in any worker
 * process. A wrangler build of the Worker costs ~3 s and one of the CLI ~0.8 s on two busy cores,
 * which some thirty files paid each before.
 *
 * The default export is a vitest globalSetup: it makes the run's folder (inside the checkout, since the
 * CLI bundle imports its packages from node_modules/) and removes it when the run ends. Without it (a
 * file run under another config) every call builds into a folder of its own, as before.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

/** The environment variable naming this run's folder of builds. */
export const RUN_BUILDS_ENV = 'GEM_TEST_RUN_BUILDS';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Each project of the config runs its globalSetup, in the same process: the first one's folder serves all.
  const before = process.env[RUN_BUILDS_ENV];
  const root = before && existsSync(before) ? before : await makeRunFolder();
  // Watch mode: the sources may have changed since, so a rerun builds again.
  project.onTestsRerun(async () => {
    for (const name of await readdir(root)) await rm(join(root, name), { recursive: true, force: true });
  });
  return root === before ? async () => {} : () => rm(root, { recursive: true, force: true });
}

async function makeRunFolder(): Promise<string> {
  const cache = join(process.cwd(), 'node_modules', '.cache');
  await mkdir(cache, { recursive: true });
  const root = await mkdtemp(join(cache, 'gem-test-run-'));
  // Reachable to other users: a CLI test runs the bundle as user nobody.
  await chmod(root, 0o755);
  process.env[RUN_BUILDS_ENV] = root;
  return root;
}

export interface RunBuild {
  /** The folder the build wrote. */
  dir: string;
  /** Removes a folder built for this file alone; a run's shared build stays until the run ends. */
  remove(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The folder `name` of this run, which `build(dir)` fills: built by the first caller of the run (the
 * others wait for it), reused by the later ones. Outside a run's globalSetup: a new folder under
 * `fallbackParent` for this caller alone.
 */
export async function buildOnce(
  name: string,
  build: (dir: string) => Promise<void>,
  fallbackParent: string,
): Promise<RunBuild> {
  const root = process.env[RUN_BUILDS_ENV];
  if (!root || !existsSync(root)) {
    await mkdir(fallbackParent, { recursive: true });
    const dir = await mkdtemp(join(fallbackParent, `gem-${name}-test-`));
    try {
      await build(dir);
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
  }
  const dir = join(root, name);
  const lock = `${dir}.building`;
  const deadline = Date.now() + 180_000;
  while (!existsSync(dir)) {
    if (Date.now() > deadline) throw new Error(`the run's ${name} build did not finish within 180 s`);
    try {
      await mkdir(lock);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      // Another file builds it: wait for its folder (or for its failure, which frees the lock). A
      // builder that died (its worker killed) leaves the lock behind: taken from it.
      const builder = Number(await readFile(join(lock, 'pid'), 'utf8').catch(() => ''));
      if (builder && !alive(builder)) await rm(lock, { recursive: true, force: true });
      else await sleep(50);
      continue;
    }
    try {
      await writeFile(join(lock, 'pid'), String(process.pid));
      if (!existsSync(dir)) {
        // Built beside, then renamed (same depth: the bundle's relative paths to the sources hold).
        const building = `${dir}.tmp`;
        await rm(building, { recursive: true, force: true });
        await mkdir(building);
        await build(building);
        await rename(building, dir);
      }
    } finally {
      await rm(lock, { recursive: true, force: true });
    }
  }
  return { dir, remove: async () => {} };
}
