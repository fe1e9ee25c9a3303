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

  /**
   * The major version of a tool, e.g. 15 for "pg_dump (PostgreSQL) 15.18". "Not found" only when the
   * file is missing; a tool that is there but does not run (a missing library, no permission, a
   * wrapper that fails) is named by its path with what it did instead, so nobody reinstalls in vain.
   */
  async majorVersion(tool: 'pg_dump' | 'pg_restore'): Promise<{ major: number; text: string }> {
    const path = this.path(tool);
    const result = await runProcess(path, ['--version']).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') {
        throw new Error(`${tool} not found in ${this.binDir}: apt-get install -y postgresql-client-15`);
      }
      throw new Error(`${tool} at ${path} did not run: ${error.message}`);
    });
    const match = /(\d+)(?:\.(\d+))?/.exec(result.stdout);
    if (result.code !== 0 || !match) {
      const how =
        result.code !== 0
          ? result.code === null
            ? `killed by ${result.signal}`
            : `exit code ${result.code}`
          : 'no version printed';
      const said = firstLine(result.stderr) || firstLine(result.stdout);
      throw new Error(`${tool} at ${path} did not run: ${how}${said ? `: ${said}` : ''}`);
    }
    return { major: Number(match[1]), text: result.stdout.trim() };
  }
}

/** The first non-empty line of a program's output, cut to 200 characters. */
function firstLine(text: string): string {
  return (text.split('\n').find((l) => l.trim()) ?? '').trim().slice(0, 200);
}
