/** Applies the committed drizzle-kit migrations (drizzle/) to schema gem_backup at start. */
import { fileURLToPath } from 'node:url';
import { drizzle } from 'drizzle-orm/postgres-js';
import { migrate } from 'drizzle-orm/postgres-js/migrator';
import { openSql } from './connect';

/** Where the committed migrations live (the repo's drizzle/ folder). */
const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url));

/** Brings gem_backup up to date; the migrator keeps its journal in gem_backup.__drizzle_migrations. */
export async function migrateAgentSchema(databaseUrl: string): Promise<void> {
  // One connection holding a session advisory lock, so that the CLI and the service starting
  // together do not both apply the same migration.
  const sql = openSql(databaseUrl);
  try {
    await sql`select pg_advisory_lock(hashtext('gem_backup.migrations'))`;
    await migrate(drizzle(sql), { migrationsFolder: MIGRATIONS_FOLDER, migrationsSchema: 'gem_backup' });
  } finally {
    // Ending the session releases the lock.
    await sql.end({ timeout: 5 });
  }
}
