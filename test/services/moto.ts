// moto's S3 server (the Python moto package) on 127.0.0.1: the one S3 server here that implements ListMultipartUploads.
import { type ChildProcess, spawn } from 'node:child_process';
import { freePort, waitForPort } from './ports';

export interface MotoService {
  endpoint: string;
  stop(): Promise<void>;
}

/** Starts moto_server on a free port (no buckets: create them with the SDK; any credentials are accepted). */
export async function startMoto(): Promise<MotoService> {
  const port = await freePort();
  const child: ChildProcess = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr?.on('data', (chunk) => {
    log = (log + chunk).slice(-2000);
  });
  let missing = false;
  child.on('error', () => {
    missing = true;
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((done) => child.once('exit', done));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((done) => setTimeout(done, 3000))]);
    }
  };
  await waitForPort(port, {
    exited: () =>
      missing
        ? "moto_server is not installed: pip install 'moto[server]' (Debian has no package for it)"
        : child.exitCode !== null
          ? `moto_server exited (${child.exitCode}): ${log}`
          : undefined,
  });
  return { endpoint: `http://127.0.0.1:${port}`, stop };
}
