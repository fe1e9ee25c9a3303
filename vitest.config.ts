import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One PostgreSQL cluster made per run; each file's startPostgres copies it instead of running initdb.
    globalSetup: ['test/services/postgres-template.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
    // Real services (PostgreSQL, sshd, smbd, s3rver, workerd) start per file; two cores, two files at once.
    maxWorkers: 2,
  },
});
