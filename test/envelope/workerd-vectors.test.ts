// The shared envelope code runs unchanged in workerd: the frozen vectors decrypt there, and what it seals opens in Node.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOpenTransform } from '../../agent/keys/envelope-node';
import { tryParseHeader, unwrapWithMasterKeys } from '../../shared/envelope';
import { drainNode, flipBit } from './helpers';
import { allVectors, vectorsDir, vectorsJson, vectorsV2Json } from './vectors-fixture';

let mf: Miniflare;

beforeAll(async () => {
  const bundle = await build({
    entryPoints: [join(import.meta.dirname, 'workerd-worker.ts')],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'neutral',
    conditions: ['workerd', 'worker', 'browser'],
    mainFields: ['module', 'main'],
    logLevel: 'silent',
  });
  const script = bundle.outputFiles[0]!.text;
  expect(script).not.toMatch(/from\s*["']node:/); // shared/ must not reach for node: modules
  mf = new Miniflare({
    modules: true,
    script,
    compatibilityDate: '2026-04-01',
    compatibilityFlags: ['nodejs_compat'],
  });
  await mf.ready;
});

afterAll(async () => {
  await mf?.dispose();
});

async function post(path: string, body: Uint8Array, keys: object) {
  const response = await mf.dispatchFetch(`http://envelope.test${path}`, {
    method: 'POST',
    body,
    headers: { 'x-keys': JSON.stringify(keys) },
  });
  return { status: response.status, body: Buffer.from(await response.arrayBuffer()) };
}

describe.each(allVectors)('frozen vector $file inside workerd', (vector) => {
  const file = readFileSync(join(vectorsDir, vector.file));

  it.each([
    ['master key', { masterKey: vectorsJson.masterKey }],
    ['escrow key', { escrowPrivateJwk: vectorsJson.escrowPrivateJwk }],
  ])('decrypts with the %s', async (_recipient, keys) => {
    const { status, body } = await post('/open', file, keys);
    const result = JSON.parse(body.toString());
    expect(status).toBe(200);
    expect(result).toMatchObject({
      length: vector.plaintextLength,
      sha256: vector.plaintextSha256,
      version: vector.version,
      installationTag: vectorsV2Json.installationTag,
      installationPrefix: vectorsV2Json.installationPrefix,
    });
    if (vector.file.endsWith('-3chunks.bin') && 'escrowPrivateJwk' in keys)
      expect(result.keyring).toBe(vectorsJson.keyring);
  });
});

describe('the envelope inside workerd', () => {
  it('rejects a damaged vector with the same code as Node', async () => {
    const file = readFileSync(join(vectorsDir, 'v1-3chunks.bin'));
    const { status, body } = await post('/open', flipBit(file, file.length - 100), {
      masterKey: vectorsJson.masterKey,
    });
    expect(status).toBe(422);
    expect(JSON.parse(body.toString())).toEqual({ error: 'corrupt_chunk' });
  });

  it('seals a file that the Node side opens', async () => {
    const plaintext = crypto.getRandomValues(new Uint8Array(5000));
    const { status, body } = await post('/seal', plaintext, { masterKey: vectorsJson.masterKey });
    expect(status).toBe(200);
    // Sealed in workerd as version 2: the tag of the worker's installation id, never the id.
    expect(tryParseHeader(body)!.header.core).toMatchObject({ version: 2, installationPrefix: 'abababab' });
    expect(body.includes(Buffer.from('ab'.repeat(16)))).toBe(false);
    const masterKey = { id: vectorsJson.masterKey.id, key: Buffer.from(vectorsJson.masterKey.keyHex, 'hex') };
    const opened = await drainNode(
      body,
      createOpenTransform({ resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, [masterKey]) }),
    );
    expect(opened.error).toBeUndefined();
    expect(createHash('sha256').update(opened.bytes).digest('hex')).toBe(
      createHash('sha256').update(plaintext).digest('hex'),
    );
  });
});
