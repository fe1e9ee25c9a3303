import { defineConfig } from 'vitest/config';

/**
 * Files that need a process of their own: token-race mocks node:fs/promises (vi.mock) for the agent's
 * modules it imports; memory and load measure this process's heap and RSS, which other files' garbage
 * would move.
 */
const ISOLATED = ['test/system/token-race.test.ts', 'test/backup/memory.test.ts', 'test/faults/load.test.ts'];

export default defineConfig({
  test: {
    // One PostgreSQL cluster made per run; each file's startPostgres copies it instead of running initdb.
    // One folder per run for the CLI and DR Worker bundles, built by the first file that needs each.
    globalSetup: ['test/services/postgres-template.ts', 'test/services/run-builds.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    // expect.poll waits for a state that must come (a page's round trip to the agent, an SFTP delete, a
    // job's fsynced record): its default of 1 s is less than a busy two-core machine can take for that.
    expect: { poll: { timeout: 15_000 } },
    reporters: ['default'],
    // Real services (PostgreSQL, sshd, smbd, s3rver, workerd) start per file; two cores, two files at once.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'shared',
          include: ['test/**/*.test.ts'],
          exclude: ISOLATED,
          // A worker process runs file after file and keeps the modules it imported: the agent's
          // modules are evaluated once per worker instead of once per file (import 146 s -> 18 s summed
          // over a run). Every file still starts and stops its own services; none of them mocks.
          isolate: false,
        },
      },
      { extends: true, test: { name: 'isolated', include: ISOLATED, isolate: true } },
    ],
  },
});
