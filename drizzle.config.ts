/** drizzle-kit configuration: `npx drizzle-kit generate` writes the agent's migrations to drizzle/. */
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './agent/db/schema.ts',
  out: './drizzle',
  schemaFilter: ['gem_backup'],
  migrations: { schema: 'gem_backup' },
});
