// `npm run bench`: the agent's backup, verify, restore, uploads and DR push against the plain tools, A/B alternated.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { GZIP_LEVEL } from '../agent/backup/create';
import { findPgBinDir } from '../agent/config';
import { writeSmallFileAtomic } from '../agent/system/atomic-file';
import { startS3 } from '../test/services/s3';
import { startSmbd } from '../test/services/smbd';
import { startSshd } from '../test/services/sshd';
import type { ChildReport, ChildRequest } from './agent-child';
import { BENCH_DB, benchDatabase } from './database';
import { DR_ENROLLMENT_TOKEN, startBenchDrCloud } from './dr-cloud';
import type { PlainRequest } from './plain-child';
import { type Comparison, renderMarkdown, renderTerminal, type Sample, summarize } from './report';

const HERE = new URL('.', import.meta.url).pathname;
const ROOT = join(HERE, '..');
const CACHE = join(HERE, 'cache');
const TSX = join(ROOT, 'node_modules/tsx/dist/esm/index.mjs');
const SECTIONS = ['backup', 'verify', 'restore', 'upload', 'dr'] as const;

interface Options {
  bytes: number;
  runs: number;
  only: Set<string>;
  record: boolean;
  /** Run the agent child under tsx instead of compiled (what `npm start` ran before dist/). */
  tsx: boolean;
}

function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(MB|GB|M|G)?$/i.exec(text.trim());
  if (!m) throw new Error(`--size: expected e.g. 1GB or 200MB, got ${text}`);
  return Number(m[1]) * (m[2]?.toUpperCase().startsWith('M') ? 1e6 : 1e9);
}

function parseArgs(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const value = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const only = value('--only')?.split(',') ?? [...SECTIONS];
  for (const s of only)
    if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`--only: unknown ${s}`);
  return {
    bytes: parseSize(value('--size') ?? (quick ? '200MB' : '1GB')),
    runs: Number(value('--runs') ?? (quick ? 1 : 3)),
    only: new Set(only),
    record: argv.includes('--record'),
    tsx: argv.includes('--tsx'),
  };
}

const log = (line: string) => process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);

/** The agent child compiled as `npm start` runs the agent (scripts/build.mjs), unless `--tsx`. */
const COMPILED_CHILD = join(CACHE, 'child', 'agent-child.js');

/** The node flags `npm start` gives the agent (package.json), so the child's memory behaves as the agent's does. */
async function agentNodeFlags(): Promise<string[]> {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as {
    scripts: { start: string };
  };
  const [node, ...args] = pkg.scripts.start.split(/\s+/);
  if (node !== 'node') throw new Error(`package.json start: expected "node …", got ${pkg.scripts.start}`);
  return args.filter((arg) => arg.startsWith('--'));
}

async function buildAgentChild(): Promise<void> {
  const child = spawn(
    process.execPath,
    [join(ROOT, 'scripts/build.mjs'), '--out', join(CACHE, 'child'), 'agent-child=bench/agent-child.ts'],
    { stdio: ['ignore', 'ignore', 'inherit'], cwd: ROOT },
  );
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`building the agent child failed (${code})`);
}

/** Runs a node child (agent-child.ts or plain-child.ts) and parses the JSON line it prints. */
async function nodeChild<T>(
  script: string,
  request: unknown,
  compiled?: string,
  flags: string[] = [],
): Promise<T> {
  const argv = [...flags, ...(compiled ? [compiled] : ['--import', TSX, join(HERE, script)])];
  const child = spawn(process.execPath, [...argv, JSON.stringify(request)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: ROOT,
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => {
    out += c;
  });
  child.stderr.on('data', (c) => {
    err = (err + c).slice(-4000);
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0)
    throw new Error(`${script} ${JSON.stringify((request as { op: string }).op)} failed: ${err}`);
  return JSON.parse(out.trim().split('\n').pop()!) as T;
}

/** Runs a plain tool under /usr/bin/time (for its peak RSS), timing it from spawn to exit. */
async function timed(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; stdout?: 'ignore' } = {},
): Promise<{ ms: number; maxRssBytes: number }> {
  const out = join(CACHE, 'work', `time-${process.pid}.txt`);
  const started = performance.now();
  const child = spawn('/usr/bin/time', ['-f', '%M', '-o', out, command, ...args], {
    stdio: ['ignore', options.stdout ?? 'pipe', 'pipe'],
    env: { ...process.env, ...options.env },
  });
  let err = '';
  child.stderr?.on('data', (c) => {
    err = (err + c).slice(-4000);
  });
  child.stdout?.resume();
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${command} failed (${code}): ${err}`);
  const kb = Number((await readFile(out, 'utf8')).trim().split('\n').pop());
  return { ms, maxRssBytes: kb * 1024 };
}

/** Alternates A and B `runs` times (ABAB.. then BABA.. on odd runs), with an untimed `before` each. */
/**
 * Writes out the page cache's dirty pages (`sync`) before a run: otherwise the previous run's output
 * (a 200 MB backup, a restored database) is flushed during this one. Measured: the 4 GB verify right
 * after the backup runs took 0.37-0.43 s, the same verify on a settled file 0.29-0.35 s.
 */
async function flushDirtyPages(): Promise<void> {
  const child = spawn('sync', [], { stdio: 'ignore' });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`sync failed (${code})`);
}

/** Turns the bench cluster's autovacuum off or on (ALTER SYSTEM + reload: no restart). */
async function setAutovacuum(admin: postgres.Sql, on: boolean): Promise<void> {
  await admin.unsafe(`alter system set autovacuum = ${on ? 'on' : 'off'}`);
  await admin.unsafe('select pg_reload_conf()');
}

async function compare(
  name: string,
  runs: number,
  agent: () => Promise<Sample>,
  plain: () => Promise<Sample>,
  labels: { agent: string; plain: string },
  before: () => Promise<void> = async () => {},
  /**
   * One untimed plain run first: a server just started (smbd, the Worker) is slow to its first client,
   * and with one run the agent would always be that client.
   */
  warmUp = false,
): Promise<Comparison> {
  const a: Sample[] = [];
  const b: Sample[] = [];
  if (warmUp) {
    try {
      await before();
      await flushDirtyPages();
      const sample = await plain();
      log(`${name} warm-up (${labels.plain}, not counted): ${(sample.ms / 1000).toFixed(2)} s`);
    } catch (error) {
      const message = (error instanceof Error ? error.message : String(error)).split('\n')[0]!;
      log(`${name} failed: ${message}`);
      return { name, labels, agent: a, plain: b, error: message };
    }
  }
  for (let i = 0; i < runs; i++) {
    const order = i % 2 === 0 ? (['a', 'b'] as const) : (['b', 'a'] as const);
    for (const which of order) {
      let sample: Sample;
      try {
        await before();
        await flushDirtyPages();
        sample = which === 'a' ? await agent() : await plain();
      } catch (error) {
        // One failed comparison is reported as such; the other sections still run.
        const message = (error instanceof Error ? error.message : String(error)).split('\n')[0]!;
        log(`${name} failed: ${message}`);
        return { name, labels, agent: a, plain: b, error: message };
      }
      (which === 'a' ? a : b).push(sample);
      log(
        `${name} ${which === 'a' ? labels.agent : labels.plain}: ${(sample.ms / 1000).toFixed(2)} s, ` +
          `${(sample.maxRssBytes / 1048576).toFixed(0)} MB RSS`,
      );
    }
  }
  return { name, labels, agent: a, plain: b };
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const binDir = findPgBinDir(process.env.GEM_PG_BIN);
  await mkdir(CACHE, { recursive: true });
  await rm(join(CACHE, 'work'), { recursive: true, force: true });
  await mkdir(join(CACHE, 'work'), { recursive: true });
  const work = join(CACHE, 'work');
  const db = await benchDatabase({ cacheDir: CACHE, binDir, bytes: options.bytes, log });
  const stops: Array<() => Promise<void>> = [() => db.cluster.stop()];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));
  try {
    const comparisons: Comparison[] = [];
    const port = db.cluster.port;
    const pgArgs = ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres'];
    // The cluster asks every connection for the superuser's password: the plain tools get it as libpq does.
    const pgEnv = { PGPASSWORD: decodeURIComponent(new URL(db.cluster.url('postgres')).password) };
    const admin = postgres(db.cluster.url('postgres'), { max: 1, onnotice: () => {} });
    stops.push(() => admin.end());
    if ((await admin`select 1 from pg_database where datname = 'bench_target'`).length === 0)
      await admin.unsafe('create database bench_target');

    const agentDir = join(CACHE, `agent-${Math.round(options.bytes / 1e6)}MB`);
    const agentEnv = (extra: Record<string, string> = {}): Record<string, string> => ({
      DATABASE_URL: db.url,
      GEM_DATA_DIR: agentDir,
      GEM_SCRIPTS_DIR: join(agentDir, 'gem', 'scripts'),
      GEM_CONFIG_DIR: join(agentDir, 'gem', 'config'),
      GEM_AGENT_TOKEN: 'bench-admin-token-0123456789abcdef',
      GEM_PG_BIN: binDir,
      NODE_ENV: 'production',
      ...extra,
    });
    if (!existsSync(join(agentDir, 'gem'))) {
      const { writeSampleFolders } = await import('../agent/db/seed');
      await writeSampleFolders(join(agentDir, 'gem', 'scripts'), join(agentDir, 'gem', 'config'));
    }
    const nodeFlags = await agentNodeFlags();
    const agentOp = async (request: Omit<ChildRequest, 'env'> & { env?: Record<string, string> }) => {
      const r = await nodeChild<ChildReport>(
        'agent-child.ts',
        { ...request, env: agentEnv(request.env) },
        options.tsx ? undefined : COMPILED_CHILD,
        nodeFlags,
      );
      return r;
    };
    if (!options.tsx) await buildAgentChild();
    // The floor every agent figure starts from: the agent opened (compiled, as npm start runs it; or under tsx), doing nothing.
    const idle = await agentOp({ op: 'idle' });
    log(
      `agent opened (${options.tsx ? 'tsx' : 'compiled'}), idle: ${(idle.maxRssBytes / 1048576).toFixed(0)} MB RSS`,
    );
    const plainDump = join(work, 'plain.dump');
    const backupFile = async () => {
      const files = (await readdir(join(agentDir, 'backups'))).filter(
        (n) => !n.startsWith('.') && !n.endsWith('.json'),
      );
      const name = files.sort().pop();
      if (!name) throw new Error('no agent backup: run with the backup section first');
      return {
        name,
        path: join(agentDir, 'backups', name),
        size: (await stat(join(agentDir, 'backups', name))).size,
      };
    };

    // Backup: the agent end to end against pg_dump -Fc -f file (its default compression).
    const haveBackup = await backupFile().then(
      () => true,
      () => false,
    );
    if (options.only.has('backup') || !haveBackup) {
      comparisons.push(
        await compare(
          'backup',
          options.only.has('backup') ? options.runs : 1,
          async () => {
            const r = await agentOp({ op: 'backup' });
            return { ms: r.ms, maxRssBytes: r.maxRssBytes, bytes: r.bytes, work: db.bytes, phases: r.phases };
          },
          async () => {
            await rm(plainDump, { force: true });
            const r = await timed(join(binDir, 'pg_dump'), [...pgArgs, '-Fc', '-f', plainDump, BENCH_DB], {
              env: pgEnv,
            });
            return { ...r, bytes: (await stat(plainDump)).size, work: db.bytes };
          },
          { agent: 'agent backup', plain: 'pg_dump -Fc -f file' },
        ),
      );
    }
    if (!existsSync(plainDump))
      await timed(join(binDir, 'pg_dump'), [...pgArgs, '-Fc', '-f', plainDump, BENCH_DB], { env: pgEnv });

    if (options.only.has('verify')) {
      const agentVerify = (warm: boolean) => async () => {
        const r = await agentOp({ op: 'verify', warm });
        return { ms: r.ms, maxRssBytes: r.maxRssBytes, bytes: r.bytes, work: r.bytes, phases: r.phases };
      };
      const readBackupFile = async () => {
        const file = await backupFile();
        const r = await timed('cat', [file.path], { stdout: 'ignore' });
        return { ...r, bytes: file.size, work: file.size };
      };
      const plain = 'cat file > /dev/null';
      comparisons.push(
        await compare('verify', options.runs, agentVerify(false), readBackupFile, {
          agent: 'agent verify',
          plain,
        }),
      );
      // The running service's case: an agent that has read a backup before (each backup verifies itself).
      comparisons.push(
        await compare('verify (warm)', options.runs, agentVerify(true), readBackupFile, {
          agent: 'agent verify, warm',
          plain,
        }),
      );
    }

    if (options.only.has('restore')) {
      // Autovacuum would otherwise vacuum each freshly restored 1 GB database during the runs after it
      // (insert-triggered), and not evenly: before a plain run bench_plain is dropped, which cancels its
      // vacuum, while the agent's previous bench_target is vacuumed until the agent's restore replaces it.
      await setAutovacuum(admin, false);
      comparisons.push(
        await compare(
          'restore',
          options.runs,
          async () => {
            const r = await agentOp({ op: 'restore', env: { DATABASE_URL: db.cluster.url('bench_target') } });
            const { ms, maxRssBytes, bytes, phases, steps } = r;
            return { ms, maxRssBytes, bytes, work: db.bytes, phases, steps };
          },
          async () => {
            const r = await timed(
              join(binDir, 'pg_restore'),
              [...pgArgs, '-j', '2', '-d', 'bench_plain', plainDump],
              { env: pgEnv },
            );
            return { ...r, bytes: (await stat(plainDump)).size, work: db.bytes };
          },
          { agent: 'agent restore', plain: 'pg_restore -j 2' },
          async () => {
            await admin.unsafe('drop database if exists bench_plain');
            await admin.unsafe('create database bench_plain');
            // Each run starts from a server at rest: the previous run's dirty pages written out now, not
            // during the next run (whichever side that is).
            await admin.unsafe('checkpoint');
          },
        ),
      );
      // The restored copies go before autovacuum is back on (the next run creates bench_target again
      // empty, as the first did): it would otherwise vacuum the freshly loaded
      // bench_target under the upload and DR sections, whichever side is running (at 4 GB it was still
      // at work when the run ended; SMB measured 0.41 × beside it, 0.72 × in a run without it).
      await admin.unsafe('drop database if exists bench_plain');
      await admin.unsafe('drop database if exists bench_target');
      await setAutovacuum(admin, true);
    }

    if (options.only.has('upload')) {
      const file = await backupFile();
      const sshd = await startSshd();
      stops.push(() => sshd.stop());
      const smbd = await startSmbd();
      stops.push(() => smbd.stop());
      const s3 = await startS3({ bucket: 'bench' });
      stops.push(() => s3.stop());
      const keyFile = join(work, 'sftp-key');
      await writeFile(
        keyFile,
        sshd.keyUser.privateKey.endsWith('\n') ? sshd.keyUser.privateKey : `${sshd.keyUser.privateKey}\n`,
        { mode: 0o600 },
      );
      const batch = join(work, 'sftp-batch');
      await writeFile(batch, `-mkdir plain\nput ${file.path} plain/${file.name}\n`);
      const authFile = join(work, 'smb-auth');
      await writeFile(authFile, `username = ${smbd.username}\npassword = ${smbd.password}\n`, {
        mode: 0o600,
      });
      const clearRemote = async () => {
        for (const dir of [sshd.root, smbd.root]) {
          for (const entry of await readdir(dir)) {
            if (
              entry === 'bench' ||
              entry === 'plain' ||
              entry.endsWith('.backup') ||
              entry.startsWith('gem-')
            )
              await rm(join(dir, entry), { recursive: true, force: true });
          }
        }
      };
      const uploadSample = (r: { ms: number; maxRssBytes: number }) => ({
        ...r,
        bytes: file.size,
        work: file.size,
      });
      comparisons.push(
        await compare(
          'upload sftp',
          options.runs,
          async () =>
            uploadSample(
              await agentOp({
                op: 'upload',
                provider: {
                  kind: 'sftp',
                  options: {
                    host: sshd.host,
                    port: sshd.port,
                    username: sshd.keyUser.username,
                    privateKey: sshd.keyUser.privateKey,
                    remotePath: 'bench',
                    hostKeyFingerprint: sshd.hostKeyFingerprint,
                  },
                },
              }),
            ),
          async () =>
            uploadSample(
              await timed('sftp', [
                '-b',
                batch,
                '-i',
                keyFile,
                '-P',
                String(sshd.port),
                '-o',
                'StrictHostKeyChecking=no',
                '-o',
                'UserKnownHostsFile=/dev/null',
                '-o',
                'BatchMode=yes',
                `${sshd.keyUser.username}@${sshd.host}`,
              ]),
            ),
          { agent: 'agent SFTP upload', plain: 'sftp -b put' },
          clearRemote,
          true,
        ),
      );
      comparisons.push(
        await compare(
          'upload smb',
          options.runs,
          async () =>
            uploadSample(
              await agentOp({
                op: 'upload',
                provider: {
                  kind: 'smb',
                  options: {
                    host: smbd.host,
                    port: smbd.port,
                    share: smbd.share,
                    username: smbd.username,
                    password: smbd.password,
                    remotePath: '/bench/',
                  },
                },
              }),
            ),
          async () =>
            uploadSample(
              await timed('smbclient', [
                `//${smbd.host}/${smbd.share}`,
                '-p',
                String(smbd.port),
                '-m',
                'SMB3',
                '-A',
                authFile,
                '-c',
                `put "${file.path}" "${file.name}"`,
              ]),
            ),
          { agent: 'agent SMB upload', plain: 'smbclient put' },
          clearRemote,
          true,
        ),
      );
      comparisons.push(
        await compare(
          'upload s3',
          options.runs,
          async () =>
            uploadSample(
              await agentOp({
                op: 'upload',
                provider: {
                  kind: 's3',
                  options: {
                    endpoint: s3.endpoint,
                    region: s3.region,
                    bucket: s3.bucket,
                    prefix: 'agent/',
                    accessKeyId: s3.accessKeyId,
                    secretAccessKey: s3.secretAccessKey,
                    forcePathStyle: true,
                  },
                },
              }),
            ),
          async () =>
            uploadSample(
              await nodeChild<{ ms: number; maxRssBytes: number }>('plain-child.ts', {
                op: 's3',
                file: file.path,
                endpoint: s3.endpoint,
                bucket: s3.bucket,
                key: `plain/${file.name}`,
                accessKeyId: s3.accessKeyId,
                secretAccessKey: s3.secretAccessKey,
              } satisfies PlainRequest),
            ),
          { agent: 'agent S3 upload', plain: 'SDK Upload' },
          undefined,
          true,
        ),
      );
    }

    if (options.only.has('dr')) {
      const file = await backupFile();
      const cloud = await startBenchDrCloud(work);
      // A new cloud (new escrow key, empty slots) each run: the agent enrolls again instead of refusing a changed key.
      await rm(join(agentDir, 'dr-state.json'), { force: true });
      stops.push(() => cloud.dispose());
      comparisons.push(
        await compare(
          'dr push',
          options.runs,
          async () => {
            const r = await agentOp({
              op: 'dr-push',
              env: { GEM_DR_URL: cloud.url, GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN },
            });
            return { ms: r.ms, maxRssBytes: r.maxRssBytes, bytes: file.size, work: file.size };
          },
          async () => {
            // The protocol's minimum against the same Worker: hash, sign, one PUT of the same file.
            const r = await agentOp({
              op: 'dr-plain-put',
              env: { GEM_DR_URL: cloud.url, GEM_DR_ENROLLMENT_TOKEN: DR_ENROLLMENT_TOKEN },
            });
            return { ms: r.ms, maxRssBytes: r.maxRssBytes, bytes: file.size, work: file.size };
          },
          { agent: 'agent DR push', plain: 'signed PUT to the same Worker' },
          undefined,
          true,
        ),
      );
    }

    const machine = {
      date: new Date().toISOString(),
      cpus: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
      memoryGB: Math.round(totalmem() / 1e9),
      loadAverage: loadavg()
        .map((n) => n.toFixed(1))
        .join(' '),
      node: process.version,
      postgres: (await admin`select current_setting('server_version') as v`)[0]!.v as string,
      disk: await describeDisk(),
      databaseBytes: db.bytes,
      runs: options.runs,
      compression: `pg_dump -Fc -Z1 inside the agent, gzip framing level ${GZIP_LEVEL}`,
      agentIdleRssMB: Math.round(idle.maxRssBytes / 1048576),
      agentRuns: `${options.tsx ? 'under tsx' : 'compiled (scripts/build.mjs)'}, node ${nodeFlags.join(' ') || '(no flags)'}`,
    };
    const summary = summarize(comparisons);
    process.stdout.write(`\n${renderTerminal(summary, machine)}\n`);
    await writeSmallFileAtomic(
      join(HERE, 'results.json'),
      `${JSON.stringify({ machine, summary, comparisons }, null, 2)}\n`,
    );
    const markdown = renderMarkdown(summary, machine);
    await writeSmallFileAtomic(join(CACHE, 'last-run.md'), markdown);
    if (options.record) {
      await recordFigures(markdown, options.bytes >= 2e9 ? 'large' : 'main');
      log('recorded in bench/RESULTS.md');
    }
    log('results in bench/results.json');
  } finally {
    await stopAll();
  }
}

/** Replaces the figures between `<!-- figures:NAME:start -->` and `<!-- figures:NAME:end -->` in bench/RESULTS.md. */
async function recordFigures(markdown: string, name: string): Promise<void> {
  const path = join(HERE, 'RESULTS.md');
  const text = existsSync(path) ? await readFile(path, 'utf8') : '# Benchmark results\n';
  const start = `<!-- figures:${name}:start -->`;
  const end = `<!-- figures:${name}:end -->`;
  const block = `${start}\n${markdown}${end}`;
  const at = text.indexOf(start);
  const next =
    at >= 0 && text.indexOf(end, at) > at
      ? text.slice(0, at) + block + text.slice(text.indexOf(end, at) + end.length)
      : `${text.trimEnd()}\n\n${block}\n`;
  // Temp then rename: the document's hand-written sections must never be left cut short.
  await writeSmallFileAtomic(path, next);
}

async function describeDisk(): Promise<string> {
  try {
    const mounts = await readFile('/proc/mounts', 'utf8');
    const root = mounts.split('\n').find((l) => l.split(' ')[1] === '/');
    const device = root?.split(' ')[0] ?? 'unknown';
    const name = device.replace('/dev/', '').replace(/\d+$/, '');
    const rotational = await readFile(`/sys/block/${name}/queue/rotational`, 'utf8').catch(() => '?');
    return `${device} (${root?.split(' ')[2] ?? '?'}, ${rotational.trim() === '0' ? 'non-rotational' : rotational.trim() === '1' ? 'rotational' : 'unknown type'})`;
  } catch {
    return 'unknown';
  }
}

main().catch((error) => {
  process.stderr.write(
    `bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
