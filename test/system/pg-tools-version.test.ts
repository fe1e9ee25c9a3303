// A pg_dump that is there but does not run is not "not found": the message says what it did instead.
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PostgresTools } from '../../agent/system/postgres-tools';
import { tempDirForTest } from '../services/temp-dir';

describe('the pg_dump version check', () => {
  it('says "not found" only when pg_dump is missing', async () => {
    const dir = await tempDirForTest('gem-pg-bin-');
    await expect(new PostgresTools(dir).majorVersion('pg_dump')).rejects.toThrow(
      `pg_dump not found in ${dir}: apt-get install -y postgresql-client-15`,
    );
  });

  it('names the path, the exit code and the first line of stderr when pg_dump exits non-zero', async () => {
    const dir = await tempDirForTest('gem-pg-bin-');
    await writeFile(
      join(dir, 'pg_dump'),
      '#!/bin/sh\necho "error while loading shared libraries: libpq.so.5" >&2\necho second >&2\nexit 1\n',
    );
    await chmod(join(dir, 'pg_dump'), 0o755);
    const error = await new PostgresTools(dir).majorVersion('pg_dump').catch((e: Error) => e);
    expect((error as Error).message).toBe(
      `pg_dump at ${join(dir, 'pg_dump')} did not run: exit code 1: error while loading shared libraries: libpq.so.5`,
    );
  });
});
