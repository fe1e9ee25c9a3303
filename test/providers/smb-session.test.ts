// The SMB provider's one-session put of a local file (steps fed on smbclient's stdin), against a real smbd.
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { SmbProvider } from '../../agent/providers/smb';
import { isStorageError } from '../../shared/storage/index';
import { type SmbdService, smbOptionsFor, startSmbd } from '../services/smbd';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
let smbd: SmbdService;
let dir: string;
beforeAll(async () => {
  smbd = await startSmbd();
  dir = await mkdtemp(join(tmpdir(), 'gem-smb-session-'));
});
afterAll(async () => {
  await smbd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const options = (folder: string) => smbOptionsFor(smbd, `/${folder}/`);

/**
 * The command lines of the running smbclient processes talking to this test's smbd: all of them, or
 * only this process's children (a scan quick enough to catch a put that lasts a tenth of a second).
 */
async function smbclients(only: 'all' | 'children' = 'all'): Promise<string[][]> {
  const found: string[][] = [];
  const pids =
    only === 'all'
      ? await readdir('/proc')
      : (await readFile(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8')).split(' ');
  for (const pid of pids) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = await readFile(join('/proc', pid, 'cmdline'), 'utf8').then(
      (text) => text.split('\0'),
      () => [] as string[],
    );
    if (argv[0]?.endsWith('smbclient') && argv.includes(String(smbd.port))) found.push(argv);
  }
  return found;
}

/** Polls every 2 ms until `condition` holds (or `ms` passed); returns what it last gave. */
async function poll<T>(condition: () => Promise<T | undefined>, ms = 10_000): Promise<T | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value !== undefined || Date.now() > end) return value;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const tempIn = (folder: string) => () =>
  readdir(folder).then(
    (names) => names.find((entry) => entry.startsWith('.tmp-gem-backup-')),
    () => undefined,
  );

describe('smb provider, one session per put', () => {
  it("puts a file when smbclient's stdin buffer is 64 KiB, as on a kernel with 64 KiB pages", async () => {
    const file = await randomFile(dir, 'big-pages', 3 * MIB + 11);
    const provider = new SmbProvider({
      ...options('big-pages'),
      command: ['stdbuf', '-i65536', 'smbclient'],
      timeoutSeconds: 10,
    });
    const stored = await provider.put(name, fileSource(file.path, file.bytes.length, file.sha256));
    expect(stored).toMatchObject({ name, size: file.bytes.length, sha256: file.sha256 });
    expect((await provider.list()).map((o) => o.name)).toEqual([name]);
  });

  it('never puts the password on a command line', async () => {
    const file = await randomFile(dir, 'argv', 32 * MIB);
    const seen: string[][] = [];
    let watching = true;
    const watch = (async () => {
      while (watching) seen.push(...(await smbclients('children')));
    })();
    try {
      await new SmbProvider(options('argv')).put(name, fileSource(file.path, file.bytes.length, file.sha256));
    } finally {
      watching = false;
      await watch;
    }
    expect(seen.length).toBeGreaterThan(0);
    for (const argv of seen) expect(argv.join(' ')).not.toContain(smbd.password);
  });

  it('a put cancelled while the file is on its way stops with aborted and never shows it under the final name', async () => {
    const file = await randomFile(dir, 'cancel', 48 * MIB);
    const folder = join(smbd.root, 'cancel');
    const controller = new AbortController();
    const putting = new SmbProvider(options('cancel'))
      .put(name, fileSource(file.path, file.bytes.length, file.sha256), { signal: controller.signal })
      .catch((caught: unknown) => caught);
    expect(await poll(tempIn(folder))).toBeDefined();
    controller.abort();
    const error = await putting;
    expect(isStorageError(error, 'aborted')).toBe(true);
    expect(await stat(join(folder, name)).catch(() => undefined)).toBeUndefined();
    // What the cancelled put left (if the cleanup could not remove it) is a temp name, swept later.
    for (const entry of await readdir(folder)) expect(entry.startsWith('.tmp-gem-backup-')).toBe(true);
    expect(await poll(async () => ((await smbclients()).length === 0 ? true : undefined))).toBe(true);
  });

  it('an agent that dies during the put leaves smbclient to exit without renaming: only the temp is left, and no password file', async () => {
    const file = await randomFile(dir, 'dies', 64 * MIB);
    const folder = join(smbd.root, 'dies');
    // The agent's temp dir (os.tmpdir() reads TMPDIR), where its auth file goes.
    const agentTemp = await mkdtemp(join(dir, 'agent-tmp-'));
    // The agent's side in a process of its own, killed outright once the put is under way.
    const script = [
      "import { SmbProvider } from './agent/providers/smb.ts';",
      "import { fileSource } from './agent/offsite/transfer.ts';",
      'const job = JSON.parse(process.env.SMB_PUT_JOB);',
      'await new SmbProvider(job.options).put(job.name, fileSource(job.path, job.size, job.sha256));',
      "console.log('stored');",
    ].join('\n');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: process.cwd(),
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env,
        TMPDIR: agentTemp,
        SMB_PUT_JOB: JSON.stringify({
          options: options('dies'),
          name,
          path: file.path,
          size: file.bytes.length,
          sha256: file.sha256,
        }),
      },
    });
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
    });
    const exited = new Promise((resolve) => child.on('close', resolve));
    const temp = await poll(tempIn(folder), 30_000);
    child.kill('SIGKILL');
    await exited;
    expect(temp).toBeDefined();
    expect(output).not.toContain('stored');
    // smbclient finishes what it was given (the put and its check), sees its stdin end and exits.
    expect(await poll(async () => ((await smbclients()).length === 0 ? true : undefined))).toBe(true);
    expect(await readdir(folder)).toEqual([temp]);
    expect((await readFile(join(folder, temp!))).equals(file.bytes)).toBe(true);
    // Removed once smbclient signed in, long before the kill: no password was left behind.
    expect((await readdir(agentTemp)).filter((entry) => entry.startsWith('gem-smb-'))).toEqual([]);
  });
});
