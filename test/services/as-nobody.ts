/** Runs agent code as the unprivileged user nobody, in a child process: what a non-root agent meets. */
import { spawn } from 'node:child_process';

/** The unprivileged user (the tests themselves run as root, which no mode stops). */
export const NOBODY = 65534;

/**
 * Runs `expression` (JavaScript whose value is a promise; `env` is in process.env) as nobody, with
 * tsx; resolves with its exit code and stderr: nothing when it resolved, else the error's code, a
 * space and its message.
 */
export function runAsNobody(
  expression: string,
  env: Record<string, string>,
): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '-e',
      `(${expression}).catch((e) => { console.error(e.code, e.message); process.exit(1); })`,
    ],
    { uid: NOBODY, gid: NOBODY, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  return new Promise((done) => child.on('close', (exit) => done({ code: exit, stderr })));
}
