-- IF NOT EXISTS: the migrator creates gem_backup first, for its own __drizzle_migrations table.
CREATE SCHEMA IF NOT EXISTS "gem_backup";
--> statement-breakpoint
CREATE TABLE "gem_backup"."schedule_state" (
	"task" text PRIMARY KEY NOT NULL,
	"armed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_run_at" timestamp with time zone,
	"last_ended_at" timestamp with time zone,
	"last_result" jsonb
);
--> statement-breakpoint
CREATE TABLE "gem_backup"."settings" (
	"id" smallint PRIMARY KEY DEFAULT 1 NOT NULL,
	"doc" jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "settings_single_row" CHECK ("gem_backup"."settings"."id" = 1)
);
