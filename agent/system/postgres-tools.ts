/** The PostgreSQL command-line tools (pg_dump, pg_restore, psql): paths, versions, connection arguments. */
import { join } from 'node:path';
import { runProcess } from './spawn';

/** Connection parts of a postgres:// URL, with the password kept for the environment only. */
export interface PgConnection {
  host: string;
  port: number;
  user: string;
  password?: string;
  database: string;
}

export function parseDatabaseUrl(url: string): PgConnection {
  const u = new URL(url);
  const host = u.searchParams.get('host') ?? (decodeURIComponent(u.hostname) || '127.0.0.1');
  return {
    host,
    port: u.port ? Number(u.port) : 5432,
    user: decodeURIComponent(u.username) || 'postgres',
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres',
  };
}

export function databaseUrl(conn: PgConnection, database = conn.database): string {
  const auth = conn.password
    ? `${encodeURIComponent(conn.user)}:${encodeURIComponent(conn.password)}`
    : encodeURIComponent(conn.user);
  const host = conn.host.startsWith('/') ? 'localhost' : conn.host;
  const query = conn.host.startsWith('/') ? `?host=${encodeURIComponent(conn.host)}` : '';
  return `postgres://${auth}@${host}:${conn.port}/${encodeURIComponent(database)}${query}`;
}

/** Arguments that select the server and user; the password goes in PGPASSWORD, never on the command line. */
export function connectionArgs(conn: PgConnection): string[] {
  return ['--host', conn.host, '--port', String(conn.port), '--username', conn.user, '--no-password'];
}

export function connectionEnv(conn: PgConnection): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PGCONNECT_TIMEOUT: '10' };
  if (conn.password) env.PGPASSWORD = conn.password;
  else delete env.PGPASSWORD;
  return env;
}

export class PostgresTools {
  constructor(readonly binDir: string) {}

  path(tool: 'pg_dump' | 'pg_restore' | 'psql' | 'initdb' | 'pg_ctl' | 'postgres'): string {
    return join(this.binDir, tool);
  }

  /** The major version of a tool, e.g. 15 for "pg_dump (PostgreSQL) 15.18". */
  async majorVersion(tool: 'pg_dump' | 'pg_restore'): Promise<{ major: number; text: string }> {
    const result = await runProcess(this.path(tool), ['--version']);
    const match = /(\d+)(?:\.(\d+))?/.exec(result.stdout);
    if (result.code !== 0 || !match) {
      throw new Error(`${tool} not found in ${this.binDir}: apt-get install -y postgresql-client-15`);
    }
    return { major: Number(match[1]), text: result.stdout.trim() };
  }
}
