/** Opens an agent over a data dir: embedded cluster (or DATABASE_URL), keyring, catalog, jobs. Used by main.ts and the CLI. */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type postgres from 'postgres';
import { isBackupName } from '../shared/storage/names';
import type { BackupInfo, BackupCatalog as Catalog } from './backup/catalog';
import { BackupCatalog } from './backup/catalog';
import type { BackupSources } from './backup/create';
import { prepareArchiveHasher } from './backup/member-hasher';
import { retentionHook } from './backup/retention';
import { type AgentConfig, type DataPaths, dataPaths } from './config';
import { type ClusterHandle, ensureDatabase, startCluster } from './db/cluster';
import { openSql, type SqlOptions } from './db/connect';
import { migrateAgentSchema } from './db/migrate';
import { hasGemSchema, seedGemDatabase, writeSampleFolders } from './db/seed';
import { AuditLog } from './http/audit';
import { JobHistory } from './jobs/history';
import { clearStaleLock as clearLeftLock } from './jobs/lock';
import type { Job, JobContext } from './jobs/runner';
import { JobRunner } from './jobs/runner';
import { KeyStateStore } from './keys/key-state';
import { Keyring } from './keys/keyring';
import type { Logger } from './log';
import { offsiteUploadHook } from './offsite/service';
import { removeAbandonedSmbTemp } from './providers/smb-temp';
import { recoverRestoreAtStart, restoreSettled } from './restore/swap';
import { SettingsService } from './settings/service';
import {
  createSmallFileExclusive,
  mkdirDurable,
  processWorkFolder,
  removeAbandoned,
  writeSmallFileAtomic,
} from './system/atomic-file';
import { PostgresTools, parseDatabaseUrl } from './system/postgres-tools';
import { logProgramsTo } from './system/spawn';

/**
 * Something to do after every new, verified backup (auto-upload, retention): failures are recorded, never
 * fatal. What it returns, or the `details` of the error it throws, is kept in the backup job's result
 * (`followUps.<name>.details`): the auto-upload's outcome per destination.
 */
export type AfterBackupHook = (backup: BackupInfo, ctx: JobContext) => Promise<unknown>;

/** Everything the HTTP app, the CLI and the schedulers work with: real dependencies, wired once. */
export interface Agent {
  config: AgentConfig;
  paths: DataPaths;
  log: Logger;
  token: string;
  keyring: Keyring;
  keyState: KeyStateStore;
  catalog: Catalog;
  jobs: JobRunner;
  audit: AuditLog;
  sources: BackupSources;
  /** A pool on GEM's database (the agent's own schema lives there too). */
  sql: postgres.Sql;
  databaseUrl: string;
  /** The embedded cluster GEM's database lives on, when there is no DATABASE_URL. */
  cluster?: ClusterHandle;
  afterBackup: AfterBackupHook[];
  /** The saved settings (gem_backup.settings), their change hooks and the schedules' last runs. */
  settings: SettingsService;
  /** Stops what open() started (jobs, pool) and ends its use of the embedded cluster (stopped if ours). */
  close(): Promise<void>;
}

export const EMBEDDED_DATABASE = 'gem';

/** The admin token in `path`, made there (0600) on the first start; every process starting at once gets the same. */
export async function loadOrCreateToken(path: string): Promise<string> {
  const saved = async () => {
    const text = (await readFile(path, 'utf8').catch(() => '')).trim();
    return text.length >= 16 ? text : undefined;
  };
  const found = await saved();
  if (found) return found;
  const token = randomBytes(32).toString('base64url');
  // Exclusive, never "if it does not exist yet, write": a process starting beside this one may have
  // created it since the read above, and both must then use its token.
  if (await createSmallFileExclusive(path, `${token}\n`, 0o600)) return token;
  const theirs = await saved();
  if (theirs) return theirs;
  // There, but holding no token (cut short by a crash of an older version, emptied by hand): replaced.
  await writeSmallFileAtomic(path, `${token}\n`, 0o600);
  return token;
}

/**
 * Opens the agent over `config.dataDir`. Without DATABASE_URL it starts (and on first start creates
 * and seeds) its own cluster; `ownCluster` (the agent serving the data dir) says close() stops it
 * even if it was running before (adopted), otherwise only if this process started it;
 * `pool` tunes the pool on GEM's database (agent.sql).
 */
export async function openAgent(
  config: AgentConfig,
  log: Logger,
  options: { ownCluster?: boolean; pool?: SqlOptions } = {},
): Promise<Agent> {
  // The hashing worker boots (60-75 ms) while the agent opens: every backup, verify and restore needs it.
  prepareArchiveHasher();
  // GEM_LOG_LEVEL=debug: every program the agent runs (pg_dump, pg_restore, smbclient, ...) and how it ended.
  logProgramsTo(log);
  const paths = dataPaths(config.dataDir);
  await mkdirDurable(config.dataDir, 0o700);
  const keyring = await Keyring.loadOrCreate(paths.keyring, log);

  let cluster: ClusterHandle | undefined;
  let databaseUrl = config.databaseUrl;
  // The embedded cluster's end with this process: stopped if it is ours (see ClusterHandle), else
  // only this process's use of it ends. Never called for a DATABASE_URL's server.
  const endCluster = async () => {
    if (cluster) await (options.ownCluster ? cluster.stop() : cluster.release());
  };
  let pool: postgres.Sql | undefined;
  try {
    if (!databaseUrl) {
      cluster = await startCluster({ dir: paths.cluster, binDir: config.pgBinDir, log });
      await ensureDatabase(cluster.url('postgres'), EMBEDDED_DATABASE);
      databaseUrl = cluster.url(EMBEDDED_DATABASE);
    }
    const sql = openSql(databaseUrl, 5, options.pool);
    pool = sql;
    const scriptsDir = config.scriptsDir ?? paths.sampleScripts;
    const configDir = config.configDir ?? paths.sampleConfig;
    const restoreRecovery = await recoverRestoreAtStart(config, log, { databaseUrl, scriptsDir, configDir });
    if (!config.databaseUrl && !(await hasGemSchema(sql))) {
      log.info('seeding the embedded database with a sample GEM installation');
      await seedGemDatabase(sql, keyring.activeKey);
    }
    // Samples go only into the agent's own default folders, never into a configured (real) one.
    if (!config.scriptsDir && !existsSync(scriptsDir)) {
      await writeSampleFolders(scriptsDir, config.configDir || existsSync(configDir) ? undefined : configDir);
    }

    // The agent's own schema (gem_backup), brought up to date before anything reads settings.
    await migrateAgentSchema(databaseUrl);
    const settings = await SettingsService.open({ sql, keyring, log, dataDir: config.dataDir });

    const catalog = new BackupCatalog(paths.backups, paths.backupRecords, log);
    const lockPath = `${config.dataDir}/job.lock`;
    await clearStaleLock(lockPath);
    // Temp files and work folders are named after the process that writes them: only what a dead
    // process left is removed, so the CLI starting beside a busy agent never breaks its jobs.
    await catalog.init();
    const workRoot = paths.work;
    await removeAbandoned(workRoot, { all: true });
    // A state file's (or the keyring's) temp copy a process killed before its rename left.
    await removeAbandoned(config.dataDir);
    // Named after this process and its PID namespace, and kept fresh: a sweep in another container spares it.
    paths.work = processWorkFolder(workRoot);
    // An SMB password file (or spooled backup) a killed process left in the temp dir.
    const smbLeftovers = await removeAbandonedSmbTemp();
    if (smbLeftovers.length > 0) {
      log.info('removed what a stopped process left of SMB transfers in the temp dir', {
        removed: smbLeftovers,
      });
    }
    // The recent jobs survive a restart; one a crash interrupted is listed as failed `interrupted`.
    const jobs = new JobRunner({
      lockPath,
      log,
      history: new JobHistory(join(config.dataDir, 'jobs.json'), log),
    });
    // A backup killed after its rename, before its next phase was written, is told as kept.
    await jobs.loadHistory(restoreRecovery, async (name) =>
      isBackupName(name) ? existsSync(join(paths.backups, name)) : false,
    );
    const token = config.agentToken ?? (await loadOrCreateToken(paths.token));

    const audit = new AuditLog(paths.audit);
    const agent: Agent = {
      config,
      paths,
      log,
      token,
      keyring,
      keyState: new KeyStateStore(paths.state, log),
      catalog,
      jobs,
      audit,
      sources: {
        conn: parseDatabaseUrl(databaseUrl),
        tools: new PostgresTools(config.pgBinDir),
        scriptsDir,
        configDir,
      },
      sql,
      databaseUrl,
      ...(cluster ? { cluster } : {}),
      afterBackup: [],
      settings,
      close: async () => {
        await jobs.shutdown();
        // A restore removes what it replaced after reporting success: done before the database closes
        // (a CLI that started the embedded cluster stops it next), or a whole copy of the old data stays.
        await restoreSettled(config.dataDir);
        await audit.flush();
        await sql.end({ timeout: 5 });
        await endCluster();
      },
    };
    // Retention prunes only after a new backup completed and verified (after-backup hooks run only then).
    agent.afterBackup.push(retentionHook(agent));
    // Then the new backup goes to every offsite destination with auto-upload on (failures recorded, never fatal).
    agent.afterBackup.push(offsiteUploadHook(agent));
    return agent;
  } catch (error) {
    // A start that fails half-way ends what it opened: the pool (which would keep a CLI command
    // waiting after its error line) and the embedded cluster if it is ours to stop.
    await pool?.end({ timeout: 5 }).catch(() => {});
    await endCluster().catch((stopError: unknown) =>
      log.warn('could not stop the embedded PostgreSQL after the failed start', { error: stopError }),
    );
    throw error;
  }
}

/** A lock left by a process that no longer runs (a crash) is removed at start; true if a live process holds it. */
async function clearStaleLock(path: string): Promise<boolean> {
  // The job lock's own rule: dead only on ESRCH, removed only through its safe takeover.
  return clearLeftLock(path);
}

export type { Job };
