// A real S3-compatible server (s3rver, as a child process) on 127.0.0.1 for S3 tests, with one bucket.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort, waitForPort } from './ports';

const S3RVER = resolve('node_modules/s3rver/bin/s3rver.js');

export interface S3Service {
  endpoint: string;
  region: 'us-east-1';
  accessKeyId: 'S3RVER';
  secretAccessKey: 'S3RVER';
  /** A bucket that exists and is empty at start. */
  bucket: string;
  /** The data folder s3rver keeps objects in. */
  root: string;
  stop(): Promise<void>;
}

/** Starts s3rver on a free port with `bucket` (default `gem-backups`) already created. */
export async function startS3(options: { bucket?: string } = {}): Promise<S3Service> {
  if (!existsSync(S3RVER)) throw new Error('s3rver is not installed: npm install --save-dev s3rver@3.7.1');
  const bucket = options.bucket ?? 'gem-backups';
  const root = await mkdtemp(join(tmpdir(), 'gem-s3-'));
  const port = await freePort();
  const child: ChildProcess = spawn(
    process.execPath,
    [S3RVER, '-d', root, '-a', '127.0.0.1', '-p', String(port), '-s', '--configure-bucket', bucket],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (chunk) => {
    log = (log + chunk).slice(-4000);
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((done) => child.once('exit', done));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((done) => setTimeout(done, 3000))]);
    }
    await rm(root, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, {
      exited: () => (child.exitCode !== null ? `s3rver exited (${child.exitCode}): ${log}` : undefined),
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    endpoint: `http://127.0.0.1:${port}`,
    region: 'us-east-1',
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    bucket,
    root,
    stop,
  };
}
