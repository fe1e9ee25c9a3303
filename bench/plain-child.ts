// The plain Node clients the agent's uploads are compared with (the S3 SDK's Upload, a fetch PUT), in their own process.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

/** What the benchmark asks of one plain child. */
export type PlainRequest =
  | {
      op: 's3';
      file: string;
      endpoint: string;
      bucket: string;
      key: string;
      accessKeyId: string;
      secretAccessKey: string;
    }
  | { op: 'put'; file: string; url: string };

async function main(): Promise<void> {
  const request = JSON.parse(process.argv[2]!) as PlainRequest;
  const { size } = await stat(request.file);
  const started = performance.now();
  if (request.op === 's3') {
    // The SDK as its documentation shows it: defaults for part size and queue.
    const client = new S3Client({
      endpoint: request.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: request.accessKeyId, secretAccessKey: request.secretAccessKey },
    });
    await new Upload({
      client,
      params: { Bucket: request.bucket, Key: request.key, Body: createReadStream(request.file) },
    }).done();
    client.destroy();
  } else {
    const res = await fetch(request.url, {
      method: 'PUT',
      headers: { 'content-length': String(size) },
      body: Readable.toWeb(createReadStream(request.file, { highWaterMark: 1 << 20 })) as ReadableStream,
      duplex: 'half',
    } as RequestInit);
    if (!res.ok) throw new Error(`PUT answered ${res.status}`);
    await res.arrayBuffer();
  }
  const ms = performance.now() - started;
  process.stdout.write(
    `${JSON.stringify({ ms, maxRssBytes: process.resourceUsage().maxRSS * 1024, bytes: size })}\n`,
  );
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
