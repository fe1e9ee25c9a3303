/** Environment -> typed config, failing at boot with a clear message. */
import { existsSync } from 'node:fs';
import { resolve, sep } from 'node:path';
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

/** A bearer token: `Authorization: Bearer <token>` carries no white space, so one with any could never match. */
function token(name: string) {
  return z
    .string()
    .min(16, `${name} must be at least 16 characters`)
    .regex(/^\S+$/, `${name} must not contain spaces or other white space`)
    .optional();
}

/** Said for any PORT that is not a port number ("abc", 70000, 80.5): what to give instead. */
const PORT_WORDS = 'must be a port number from 0 to 65535, e.g. PORT=8080 (unset: 8080)';

const env = z.object({
  DATABASE_URL: z.string().url().optional(),
  GEM_DATA_DIR: z.string().min(1).default('./data'),
  GEM_SCRIPTS_DIR: z.string().min(1).optional(),
  GEM_CONFIG_DIR: z.string().min(1).optional(),
  PORT: z.coerce
    .number({ error: PORT_WORDS })
    .int(PORT_WORDS)
    .min(0, PORT_WORDS)
    .max(65535, PORT_WORDS)
    .default(8080),
  HOST: z.string().min(1).default('127.0.0.1'),
  GEM_AGENT_TOKEN: token('GEM_AGENT_TOKEN'),
  GEM_DR_URL: z.string().url().optional(),
  GEM_DR_ENROLLMENT_TOKEN: z.string().min(1).optional(),
  GEM_RESTART_COMMAND: z
    .string()
    .min(1)
    .transform((text, ctx) => {
      try {
        return parseCommand(text);
      } catch (error) {
        const why =
          error instanceof SyntaxError
            ? `not valid JSON (${error.message})`
            : 'not a list of one or more non-empty words';
        ctx.addIssue({
          code: 'custom',
          message: `${why}: give a JSON array of words, e.g. ["systemctl","restart","gem"], or words separated by spaces`,
        });
        return z.NEVER;
      }
    })
    .optional(),
  GEM_METRICS_TOKEN: token('GEM_METRICS_TOKEN'),
  NODE_ENV: z.string().default('production'),
  GEM_PG_BIN: z.string().min(1).optional(),
  GEM_LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
});

/** Parses GEM_RESTART_COMMAND: a JSON array of strings, or words split on white space (no shell rules). */
function parseCommand(text: string): string[] {
  const trimmed = text.trim();
  if (trimmed.startsWith('[')) {
    return z.array(z.string().min(1)).min(1).parse(JSON.parse(trimmed));
  }
  const words = trimmed.split(/\s+/).filter(Boolean);
  if (words.length === 0) throw new Error('GEM_RESTART_COMMAND has no words');
  return words;
}

/** Finds the PostgreSQL client/server binaries, preferring GEM_PG_BIN. */
export function findPgBinDir(preferred?: string): string {
  if (preferred) return resolve(preferred);
  return PG_BIN_CANDIDATES.find((dir) => existsSync(`${dir}/pg_dump`)) ?? PG_BIN_CANDIDATES[0]!;
}

/** One bad variable: one line (the CLI prints a failure as one line); several: one line each. */
function environmentError(lines: string[]): Error {
  return new Error(
    lines.length === 1 ? `invalid environment: ${lines[0]}` : `invalid environment:\n  ${lines.join('\n  ')}`,
  );
}

/** Reads the agent's configuration from the environment; throws one readable line per bad variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): AgentConfig {
  const parsed = env.safeParse(source);
  if (!parsed.success) {
    throw environmentError(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`));
  }
  const e = parsed.data;
  const dataDir = resolve(e.GEM_DATA_DIR);
  const scriptsDir = e.GEM_SCRIPTS_DIR ? resolve(e.GEM_SCRIPTS_DIR) : undefined;
  const configDir = e.GEM_CONFIG_DIR ? resolve(e.GEM_CONFIG_DIR) : undefined;
  const overlaps = folderOverlaps(dataDir, scriptsDir, configDir);
  if (overlaps.length > 0) throw environmentError(overlaps);
  return {
    databaseUrl: e.DATABASE_URL,
    dataDir,
    scriptsDir,
    configDir,
    port: e.PORT,
    host: e.HOST,
    agentToken: e.GEM_AGENT_TOKEN,
    drUrl: e.GEM_DR_URL,
    drEnrollmentToken: e.GEM_DR_ENROLLMENT_TOKEN,
    metricsToken: e.GEM_METRICS_TOKEN,
    restartCommand: e.GEM_RESTART_COMMAND,
    nodeEnv: e.NODE_ENV,
    pgBinDir: findPgBinDir(e.GEM_PG_BIN),
    logLevel: e.GEM_LOG_LEVEL,
  };
}

/** True if `inner` is `outer` or a path inside it (both absolute, resolved). */
function isWithin(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith(sep) ? outer : `${outer}${sep}`);
}

/**
 * What is wrong with where the backed-up folders are (unset: the sample folders in the data dir): a
 * backup packs each folder as its own part and a restore swaps each as a whole, so they must be two
 * folders apart from each other and from what the agent keeps for itself. Paths as given (symlinks are
 * not followed: a folder may not exist yet).
 */
function folderOverlaps(dataDir: string, scripts: string | undefined, config: string | undefined): string[] {
  const paths = dataPaths(dataDir);
  const folders = [
    { name: 'GEM_SCRIPTS_DIR', dir: scripts ?? paths.sampleScripts },
    { name: 'GEM_CONFIG_DIR', dir: config ?? paths.sampleConfig },
  ] as const;
  const [a, b] = folders;
  const problems: string[] = [];
  if (isWithin(a.dir, b.dir) || isWithin(b.dir, a.dir)) {
    problems.push(
      `${a.name}, ${b.name}: ${a.dir} and ${b.dir} must be two separate folders, neither inside the other: a backup would hold those files twice and a restore could not put both back`,
    );
  }
  for (const { name, dir } of folders) {
    if (isWithin(dataDir, dir)) {
      problems.push(
        `${name}: ${dir} must not be or contain the data dir ${dataDir}: backups would carry the agent's keys and its own backups, and a restore would replace them`,
      );
      continue;
    }
    const own = [paths.backups, paths.work, paths.cluster].find((folder) => isWithin(dir, folder));
    if (own) problems.push(`${name}: ${dir} must not be inside ${own}, which the agent manages itself`);
  }
  return problems;
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
    lastRestore: `${dataDir}/last-restore.json`,
    drRecovery: `${dataDir}/dr-recovery.json`,
  };
}
export type DataPaths = ReturnType<typeof dataPaths>;
