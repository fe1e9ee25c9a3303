/** Environment -> typed config, failing at boot with a clear message. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';

export interface AgentConfig {
  /** Unset: the agent runs its own PostgreSQL cluster under the data dir (the embedded default). */
  databaseUrl?: string;
  dataDir: string;
  /** Unset: a sample folder under the data dir (embedded default). */
  scriptsDir?: string;
  configDir?: string;
  port: number;
  host: string;
  agentToken?: string;
  drUrl?: string;
  drEnrollmentToken?: string;
  /** A token that may read GET /metrics only (the admin token may too). */
  metricsToken?: string;
  /** Run after a restore, as an argument array (never through a shell). */
  restartCommand?: string[];
  nodeEnv: string;
  pgBinDir: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

const PG_BIN_CANDIDATES = [
  '/usr/lib/postgresql/15/bin',
  '/usr/lib/postgresql/16/bin',
  '/usr/lib/postgresql/17/bin',
];

const env = z.object({
  DATABASE_URL: z.string().url().optional(),
  GEM_DATA_DIR: z.string().min(1).default('./data'),
  GEM_SCRIPTS_DIR: z.string().min(1).optional(),
  GEM_CONFIG_DIR: z.string().min(1).optional(),
  PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  HOST: z.string().min(1).default('127.0.0.1'),
  GEM_AGENT_TOKEN: z.string().min(16, 'GEM_AGENT_TOKEN must be at least 16 characters').optional(),
  GEM_DR_URL: z.string().url().optional(),
  GEM_DR_ENROLLMENT_TOKEN: z.string().min(1).optional(),
  GEM_RESTART_COMMAND: z.string().min(1).optional(),
  GEM_METRICS_TOKEN: z.string().min(16, 'GEM_METRICS_TOKEN must be at least 16 characters').optional(),
  NODE_ENV: z.string().default('production'),
  GEM_PG_BIN: z.string().min(1).optional(),
  GEM_LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
});

/** Parses GEM_RESTART_COMMAND: a JSON array of strings, or words split on white space (no shell rules). */
export function parseCommand(text: string): string[] {
  const trimmed = text.trim();
  if (trimmed.startsWith('[')) {
    const parsed = z.array(z.string().min(1)).min(1).parse(JSON.parse(trimmed));
    return parsed;
  }
  return trimmed.split(/\s+/).filter(Boolean);
}

/** Finds the PostgreSQL client/server binaries, preferring GEM_PG_BIN. */
export function findPgBinDir(preferred?: string): string {
  if (preferred) return resolve(preferred);
  return PG_BIN_CANDIDATES.find((dir) => existsSync(`${dir}/pg_dump`)) ?? PG_BIN_CANDIDATES[0]!;
}

/** Reads the agent's configuration from the environment; throws one readable line per bad variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): AgentConfig {
  const parsed = env.safeParse(source);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid environment:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  return {
    databaseUrl: e.DATABASE_URL,
    dataDir: resolve(e.GEM_DATA_DIR),
    scriptsDir: e.GEM_SCRIPTS_DIR ? resolve(e.GEM_SCRIPTS_DIR) : undefined,
    configDir: e.GEM_CONFIG_DIR ? resolve(e.GEM_CONFIG_DIR) : undefined,
    port: e.PORT,
    host: e.HOST,
    agentToken: e.GEM_AGENT_TOKEN,
    drUrl: e.GEM_DR_URL,
    drEnrollmentToken: e.GEM_DR_ENROLLMENT_TOKEN,
    metricsToken: e.GEM_METRICS_TOKEN,
    restartCommand: e.GEM_RESTART_COMMAND ? parseCommand(e.GEM_RESTART_COMMAND) : undefined,
    nodeEnv: e.NODE_ENV,
    pgBinDir: findPgBinDir(e.GEM_PG_BIN),
    logLevel: e.GEM_LOG_LEVEL,
  };
}

/** Where things live inside the data dir. */
export function dataPaths(dataDir: string) {
  return {
    keyring: `${dataDir}/keyring.json`,
    token: `${dataDir}/agent-token`,
    state: `${dataDir}/state.json`,
    backups: `${dataDir}/backups`,
    work: `${dataDir}/work`,
    cluster: `${dataDir}/postgres`,
    sampleScripts: `${dataDir}/gem/scripts`,
    sampleConfig: `${dataDir}/gem/config`,
    audit: `${dataDir}/audit.log`,
    backupRecords: `${dataDir}/backup-records.json`,
  };
}
export type DataPaths = ReturnType<typeof dataPaths>;
