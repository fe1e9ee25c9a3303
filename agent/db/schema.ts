/** The agent's own tables (drizzle), in schema gem_backup of GEM's database: never part of a GEM backup. */

import { sql } from 'drizzle-orm';
import { check, jsonb, pgSchema, smallint, text, timestamp } from 'drizzle-orm/pg-core';

export const gemBackup = pgSchema('gem_backup');

/**
 * The settings document: one row (id = 1). Secrets inside `doc` are sealed strings
 * (agent/keys/secrets.ts, purpose 'settings'), never plaintext.
 */
export const settings = gemBackup.table(
  'settings',
  {
    id: smallint('id').primaryKey().default(1),
    doc: jsonb('doc').notNull(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [check('settings_single_row', sql`${t.id} = 1`)],
);

/** Last runs of the scheduled tasks ('autoBackup', 'maintenance'): what the catch-up rule reads at start. */
export const scheduleState = gemBackup.table('schedule_state', {
  task: text('task').primaryKey(),
  /** When the agent first armed this task: the catch-up baseline before any run. */
  armedAt: timestamp('armed_at', { withTimezone: true }).notNull().defaultNow(),
  lastRunAt: timestamp('last_run_at', { withTimezone: true }),
  lastEndedAt: timestamp('last_ended_at', { withTimezone: true }),
  lastResult: jsonb('last_result'),
});
