// The DR cloud on Node against an S3-compatible bucket, for vendors who host it themselves.
// It keeps no state in process memory: installations' ledgers and the recovery rate limit live in
// the bucket and are updated with conditional writes (If-Match / If-None-Match: *), so several
// processes may serve one bucket (scaled out, or during a rolling restart) provided the S3 server
// honours them (AWS S3, MinIO, Cloudflare R2, moto...). On a server that ignores them the writes are
// unconditional, as before: run one process per bucket there.
import { S3Client } from '@aws-sdk/client-s3';
import { serve } from '@hono/node-server';
import { getConnInfo } from '@hono/node-server/conninfo';
import { createCloudApp } from './app';
import { forwardedClient } from './auth/client-address';
import { type CloudDeps, parseCloudConfig } from './deps';
import { S3InstallationStates } from './state/s3-ledger';
import { S3RecoveryRateLimiter } from './state/s3-rate-limiter';
import { S3SlotStore } from './store/s3';

/** Settings of the self-hosted entry, from the environment. */
export interface NodeCloudOptions {
  s3: S3Client;
  bucket: string;
  env: Record<string, string | undefined>;
}

/** The app wired to S3; any number of these (in one process or many) may share the bucket. */
export function createNodeCloudApp(opts: NodeCloudOptions) {
  const config = parseCloudConfig(opts.env);
  const store = new S3SlotStore(opts.s3, opts.bucket);
  const states = new S3InstallationStates(opts.s3, opts.bucket, store);
  const limiter = new S3RecoveryRateLimiter(opts.s3, opts.bucket);
  const trustProxy = opts.env.TRUST_PROXY === '1';
  const deps: CloudDeps = {
    store,
    // The socket's address; behind a reverse proxy (TRUST_PROXY=1) the address that proxy forwarded,
    // else every client would share the proxy's one recovery limit.
    clientAddress: (c) =>
      (trustProxy ? forwardedClient(c.req.header('x-forwarded-for')) : undefined) ??
      getConnInfo(c).remote.address ??
      'unknown',
    installation: (hash) => states.installation(hash),
    takeRecoveryAttempt: (address) => limiter.take(address, config.recoverPerMinute),
    config,
  };
  return createCloudApp(() => deps);
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const s3 = new S3Client({
    endpoint: process.env.S3_ENDPOINT,
    region: process.env.S3_REGION ?? 'us-east-1',
    forcePathStyle: process.env.S3_FORCE_PATH_STYLE !== 'false',
    credentials: {
      accessKeyId: required('S3_ACCESS_KEY_ID'),
      secretAccessKey: required('S3_SECRET_ACCESS_KEY'),
    },
    // Many S3-compatible servers store aws-chunked framing verbatim: send plain bodies.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const app = createNodeCloudApp({ s3, bucket: required('S3_BUCKET'), env: process.env });
  const port = Number(process.env.PORT ?? 8787);
  const hostname = process.env.HOST ?? '127.0.0.1';
  serve({ fetch: app.fetch, port, hostname }, () =>
    console.log(`gem-dr (node) listening on http://${hostname}:${port}`),
  );
}
