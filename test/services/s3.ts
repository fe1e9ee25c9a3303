// A real S3-compatible server (s3rver, as a child process) on 127.0.0.1 for S3 tests, with one bucket.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const S3RVER = resolve('node_modules/s3rver/bin/s3rver.js');
/** s3rver's command line with objects stored whole before a PUT is answered (why: its header comment). */
const S3RVER_ATOMIC = resolve('test/services/s3rver-atomic.cjs');

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

/**
 * Starts s3rver with `bucket` (default `gem-backups`) already created, on a port the kernel gives it
 * (`-p 0`), and resolves with the port it says it listens on. Not a port found free a moment before:
 * one taken meanwhile by another test file's server made s3rver exit, while waiting for the port
 * found that other server listening there (test/services/moto.ts had this once).
 */
export async function startS3(options: { bucket?: string } = {}): Promise<S3Service> {
  if (!existsSync(S3RVER)) throw new Error('s3rver is not installed: npm install --save-dev s3rver@3.7.1');
  const bucket = options.bucket ?? 'gem-backups';
  const root = await mkdtemp(join(tmpdir(), 'gem-s3-'));
  const child: ChildProcess = spawn(
    process.execPath,
    [S3RVER_ATOMIC, S3RVER, '-d', root, '-a', '127.0.0.1', '-p', '0', '-s', '--configure-bucket', bucket],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  let out = '';
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
  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`s3rver did not say it listens after 30 s: ${log}`)),
        30_000,
      );
      child.stdout?.on('data', (chunk) => {
        out = (out + chunk).slice(-4000);
        // Printed by s3rver's bin once it listens, whatever -s says.
        const found = /S3rver listening on 127\.0\.0\.1:(\d+)/.exec(out);
        if (found) {
          clearTimeout(timer);
          resolve(Number(found[1]));
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`s3rver exited (${code ?? signal}): ${log}`));
      });
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
