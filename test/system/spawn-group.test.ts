// A program killed on cancel (or its timeout) takes what it started with it: a restart script's own
// commands, pg_restore's workers. Real processes: sh starts a sleep and waits for it.
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runProcess } from '../../agent/system/spawn';

let dir: string;
/** The grandchildren the tests started: killed at the end whatever happened. */
const started: number[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-spawn-'));
});
afterEach(async () => {
  for (const pid of started.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  await rm(dir, { recursive: true, force: true });
});

/** True once `pid` has exited (gone, or a zombie no one reaped yet). */
function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8') : '';
  return stat === '' || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

/** The pid the script wrote into `file`, once it is there. */
async function pidIn(file: string): Promise<number> {
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (text.endsWith('\n')) {
      const pid = Number(text.trim());
      started.push(pid);
      return pid;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Waits (polling, at most `rounds` times 50 ms) for `pid` to be gone; says whether it is. */
async function goneSoon(pid: number, rounds = 200): Promise<boolean> {
  for (let i = 0; i < rounds && !gone(pid); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  return gone(pid);
}

describe('a program killed when its signal aborts', () => {
  it('ends with what it started that holds its output: the run ends instead of waiting for it', async () => {
    const pidFile = join(dir, 'pid');
    const controller = new AbortController();
    // A restart script whose command hangs: the sleep keeps the script's stdout and stderr open.
    const run = runProcess('sh', ['-c', `sleep 600 & echo $! > ${pidFile}; wait`], {
      signal: controller.signal,
    });
    const grandchild = await pidIn(pidFile);
    controller.abort();
    const result = await run;
    expect(result.code).toBeNull();
    expect(result.signal).toBe('SIGTERM');
    // The run ended once its output closed: the sleep has exited.
    expect(gone(grandchild)).toBe(true);
  }, 30_000);

  it('leaves nothing it started running, even what no longer holds its output', async () => {
    const pidFile = join(dir, 'pid');
    const controller = new AbortController();
    const run = runProcess('sh', ['-c', `sleep 600 > /dev/null 2>&1 & echo $! > ${pidFile}; wait`], {
      signal: controller.signal,
    });
    const grandchild = await pidIn(pidFile);
    controller.abort();
    expect((await run).signal).toBe('SIGTERM');
    expect(await goneSoon(grandchild)).toBe(true);
  });

  it('a program that ends by itself is not killed afterwards, and a run without a signal is as before', async () => {
    const controller = new AbortController();
    const ran = await runProcess('sh', ['-c', 'echo done'], { signal: controller.signal });
    controller.abort();
    expect(ran).toMatchObject({ code: 0, stdout: 'done' });
    expect(await runProcess('sh', ['-c', 'echo plain'])).toMatchObject({ code: 0, stdout: 'plain' });
  });
});
