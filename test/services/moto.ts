// moto's S3 server (the Python moto package) on 127.0.0.1: the one S3 server here that implements ListMultipartUploads.
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import type { S3Options } from '../../agent/providers/s3';

export interface MotoService {
  endpoint: string;
  stop(): Promise<void>;
}

/** What moto_server (werkzeug) prints once it listens, with the port it was given. */
const LISTENING = /Running on http:\/\/127\.0\.0\.1:(\d+)/;

/**
 * Starts moto_server on a port the kernel gives it (`-p 0`; no buckets: create them with the SDK; any
 * credentials are accepted) and resolves with the port it says it listens on. Not a port found free a
 * moment before: moto needs a second or more to start, and a port free when asked could be taken
 * meanwhile (by an s3rver of this or another test file); moto then exited, and waiting for the port
 * found the other server listening there, so an S3 test ran against s3rver, which has no
 * ListMultipartUploads (test/offsite/sweep's moto case "found nothing to abort" once so).
 */
export async function startMoto(options: { oneRequestAtATime?: boolean } = {}): Promise<MotoService> {
  const child: ChildProcess = spawn('moto_server', ['-H', '127.0.0.1', '-p', '0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((done) => child.once('exit', done));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((done) => setTimeout(done, 3000))]);
    }
  };
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`moto_server did not say it listens after 30 s: ${log}`));
    }, 30_000);
    child.stderr?.on('data', (chunk) => {
      log = (log + chunk).slice(-2000);
      const found = LISTENING.exec(log);
      if (found) {
        clearTimeout(timer);
        resolve(Number(found[1]));
      }
    });
    child.once('error', () => {
      clearTimeout(timer);
      reject(
        new Error("moto_server is not installed: pip install 'moto[server]' (Debian has no package for it)"),
      );
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`moto_server exited (${code ?? signal}): ${log}`));
    });
  });
  const endpoint = `http://127.0.0.1:${port}`;
  if (!options.oneRequestAtATime) return { endpoint, stop };
  const serial = await serialize(port);
  return {
    endpoint: serial.endpoint,
    stop: async () => {
      await serial.close();
      await stop();
    },
  };
}

/**
 * A proxy on 127.0.0.1 that hands moto one request at a time. moto checks a conditional PUT's If-Match
 * and then stores the object, in threads of its own: two PUTs with the same ETag can both pass the
 * check under load, where S3 and R2 refuse the second (a lost update in test/cloud/node-multiprocess,
 * once in a full run). One at a time, the check and the store are one step, as in a real store.
 */
async function serialize(port: number): Promise<{ endpoint: string; close(): Promise<void> }> {
  let previous: Promise<void> = Promise.resolve();
  const server = createServer((req, res) => {
    previous = previous.then(
      () =>
        new Promise<void>((done) => {
          const upstream = request(
            { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
            (answer) => {
              res.writeHead(answer.statusCode ?? 502, answer.headers);
              answer.pipe(res);
              answer.once('end', done);
              answer.once('error', done);
            },
          );
          upstream.once('error', (error) => {
            res.destroy(error);
            done();
          });
          req.pipe(upstream);
        }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: own } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${own}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** S3Provider options for moto at `endpoint` (moto takes any credentials), backups in `bucket`, and `more`. */
export function motoProviderOptions(
  endpoint: string,
  bucket: string,
  more: Partial<S3Options> = {},
): S3Options {
  return {
    endpoint,
    region: 'us-east-1',
    bucket,
    accessKeyId: 'moto',
    secretAccessKey: 'moto',
    forcePathStyle: true,
    ...more,
  };
}

/** A plain SDK client for moto at `endpoint` (moto takes any credentials). */
export function motoClient(endpoint: string): S3Client {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'moto', secretAccessKey: 'moto' },
  });
}

/** Keys under `prefix` in `bucket` with an upload that was started and neither completed nor aborted. */
export async function incompleteUploads(endpoint: string, bucket: string, prefix: string): Promise<string[]> {
  const raw = motoClient(endpoint);
  try {
    const page = await raw.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
    return (page.Uploads ?? []).map((upload) => upload.Key!);
  } finally {
    raw.destroy();
  }
}
