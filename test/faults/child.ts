/** Runs agent-child.ts as a separate process over a data dir and follows its JSON lines; kills it on demand. */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ChildLine {
  t: number;
  event: 'started' | 'phase' | 'suicide' | 'done';
  phase?: string;
  bytesDone?: number;
  bytesTotal?: number;
  state?: string;
  error?: { code: string; message: string };
}

export interface ChildRun {
  lines: ChildLine[];
  /** Resolves when the child printed `started` (the agent is open, the job about to start). */
  started: Promise<number>;
  /** The phase the child last reported. */
  phase(): string | undefined;
  kill(): void;
  /** Resolves with how the child ended (signal or exit code) and its stderr. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * Starts the child with `env` (data dir, database, action and kill point): agent-child.ts through tsx, or
 * `entry`, its bundle (test/faults/built-child.ts), which starts without tsx's loader.
 */
export function runChild(env: Record<string, string>, entry?: string): ChildRun {
  const args = entry ? [entry] : ['--import', 'tsx', 'test/faults/agent-child.ts'];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: ChildLine[] = [];
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  let onStarted: (t: number) => void = () => {};
  const started = new Promise<number>((resolve) => {
    onStarted = resolve;
  });
  createInterface({ input: child.stdout }).on('line', (text) => {
    try {
      const line = JSON.parse(text) as ChildLine;
      lines.push(line);
      if (line.event === 'started') onStarted(Date.now());
    } catch {
      // not one of ours
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>(
    (resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  return {
    lines,
    started,
    phase: () => lines.filter((l) => l.event === 'phase').at(-1)?.phase,
    kill: () => {
      child.kill('SIGKILL');
    },
    exited,
  };
}
