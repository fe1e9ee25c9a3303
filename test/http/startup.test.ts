/**
 * What `npm start` prints: the admin token at the start that created it only, never the installation id.
 * agent/main.ts bundled once for the file by the build itself (test/faults/built-child.ts), as `npm start`
 * runs it from dist/: each of the three starts takes ~0.5 s instead of 1.3-2.3 s through tsx's loader.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let databaseUrl: string;
let dataDir: string;
let built: BuiltChildren<'main'>;
const children: ChildProcess[] = [];

beforeAll(async () => {
  ({ pg, built } = await startAll({
    pg: startPostgres,
    built: () => buildChildren({ main: 'agent/main.ts' }),
  }));
  databaseUrl = await pg.createDatabase();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-startup-'));
});
afterAll(async () => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  await pg?.stop();
  await built?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

interface Run {
  /** stdout and stderr together: what systemd or docker would keep. */
  output: string;
  url: string;
}

/**
 * Starts the bundled agent/main.ts as `npm start` does (its own process), runs `whileUp` against it,
 * then stops it with `signal` (SIGINT: Ctrl-C) and returns everything it wrote.
 */
async function runAgent(
  env: Record<string, string>,
  whileUp: (url: string, child: ChildProcess) => Promise<void> = async () => {},
  signal: NodeJS.Signals = 'SIGINT',
) {
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: databaseUrl,
    GEM_DATA_DIR: dataDir,
    GEM_PG_BIN: pg.binDir,
    PORT: '0',
    HOST: '127.0.0.1',
    NODE_ENV: 'test',
    ...env,
  };
  if (!env.GEM_AGENT_TOKEN) delete childEnv.GEM_AGENT_TOKEN;
  const child = spawn(process.execPath, [built.paths.main], {
    cwd: process.cwd(),
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString('utf8');
      const match = /is running at (http:\/\/\S+)/.exec(output);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => reject(new Error(`the agent exited (${code}) before listening:\n${output}`)));
  });
  await whileUp(url, child);
  child.kill(signal);
  expect(await exited).toBe(0);
  return { output, url } satisfies Run;
}

describe('startup output', () => {
  it('prints a new admin token once, never again, and never the installation id', async () => {
    let installationId = '';
    const first = await runAgent({}, async (url) => {
      const token = (await readFile(join(dataDir, 'agent-token'), 'utf8')).trim();
      const res = await fetch(`${url}api/v1/keys/status`, { headers: { authorization: `Bearer ${token}` } });
      installationId = ((await res.json()) as { installationId: string }).installationId;
    });
    const token = (await readFile(join(dataDir, 'agent-token'), 'utf8')).trim();
    expect(token.length).toBeGreaterThanOrEqual(32);
    expect(installationId.length).toBeGreaterThan(0);
    expect(first.output).toContain(`Admin token: ${token}`);
    // (The keyring's own "created a new keyring" line, agent/keys, is not main.ts's to change.)
    const listening = first.output.split('\n').find((line) => line.includes('agent listening'));
    expect(listening).toBeDefined();
    expect(listening).not.toContain(installationId);

    const second = await runAgent({}, async (url) => {
      // A keys import (of our own keys) is logged, without the installation id.
      const auth = { authorization: `Bearer ${token}` };
      const file = await (await fetch(`${url}api/v1/keys/export`, { headers: auth })).text();
      const imported = await fetch(`${url}api/v1/keys/import`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ file }),
      });
      expect(imported.status).toBe(200);
    });
    expect(second.output).toContain('is running at');
    expect(second.output).toContain('keys imported');
    expect(second.output).not.toContain(token);
    expect(second.output).toContain(`Admin token: in ${join(dataDir, 'agent-token')}`);
    expect(second.output).not.toContain(installationId);

    const fromEnvironment = 'environment-token-0123456789abcdef';
    const third = await runAgent({ GEM_AGENT_TOKEN: fromEnvironment });
    expect(third.output).not.toContain(fromEnvironment);
    expect(third.output).not.toContain(token);
    expect(third.output).not.toContain(installationId);
  });

  it('stops cleanly on SIGTERM and on SIGHUP (the terminal `npm start` ran in was lost), as on Ctrl-C', async () => {
    for (const signal of ['SIGTERM', 'SIGHUP'] as const) {
      const run = await runAgent({}, async () => {}, signal);
      const lines = run.output.split('\n').filter((line) => line.startsWith('{'));
      expect(
        lines.some((line) => line.includes('"shutting down"') && line.includes(`"signal":"${signal}"`)),
      ).toBe(true);
      expect(lines.some((line) => line.includes('"msg":"stopped"'))).toBe(true);
    }
  });

  it('keeps running, and stops cleanly, when its output can no longer be written (the terminal or pipe gone)', async () => {
    // Both ends read nothing more: every later log line fails (EPIPE; a lost terminal gives EIO).
    const run = await runAgent(
      {},
      async (url, child) => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        // Requests that log (a refused token is logged as a warning) still get their answers.
        for (let i = 0; i < 3; i++) expect((await fetch(`${url}api/v1/backups`)).status).toBe(401);
        expect((await fetch(`${url}healthz`)).status).toBe(200);
      },
      'SIGTERM',
    );
    expect(run.output).toContain('is running at');
  });
});
