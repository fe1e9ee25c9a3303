// The cloud app on Node over a test S3 server (cloud/node.ts's way): its S3 client, its deps, served on loopback.
import type { AddressInfo } from 'node:net';
import { S3Client } from '@aws-sdk/client-s3';
import { type ServerType, serve } from '@hono/node-server';
import { createCloudApp } from '../../cloud/app';
import { type CloudDeps, parseCloudConfig } from '../../cloud/deps';
import type { InstallationStateApi } from '../../cloud/state/ledger';
import type { SlotStore } from '../../cloud/store/slot-store';
import type { S3Service } from '../services/s3';
import { ENROLLMENT_TOKEN } from './harness';

/** An S3 client of a test S3 server; checksums only when required (s3rver knows none of the newer ones). */
export function s3ClientFor(s3: S3Service): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** The cloud's deps over `store` and the installations' state, with the test enrollment token. */
export function nodeCloudDeps(
  store: SlotStore,
  installation: (hash: string) => InstallationStateApi,
): CloudDeps {
  return {
    store,
    clientAddress: () => '127.0.0.1',
    installation,
    takeRecoveryAttempt: async () => true,
    config: parseCloudConfig({ ENROLLMENT_TOKEN }),
  };
}

export interface ServedCloud {
  url: string;
  close(): Promise<void>;
}

/** Serves `app` (createCloudApp over `deps` when deps are given) on a free port of 127.0.0.1. */
export async function serveCloud(
  app: { fetch: (request: Request) => Response | Promise<Response> } | CloudDeps,
) {
  const { fetch } = 'fetch' in app ? app : createCloudApp(() => app);
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const served: ServedCloud = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  return served;
}
