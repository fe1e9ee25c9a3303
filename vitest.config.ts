import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
    // Real services (PostgreSQL, sshd, smbd, s3rver, workerd) start per file; two cores, two files at once.
    maxWorkers: 2,
  },
});
