// shared/signing on its own: what verifyRequest accepts and refuses.
import { base64url, CompactSign, exportJWK, generateKeyPair, type JWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  decodeUnverified,
  EMPTY_BODY_SHA256,
  type SignatureError,
  sha256Hex,
  signRequest,
  tokenFromAuthorization,
  verifyRequest,
} from '../../shared/signing';

const installationId = '0123456789abcdef0123456789abcdef';
let privateJwk: JWK;
let publicJwk: JWK;
const now = new Date('2026-11-28T12:00:00Z');

beforeAll(async () => {
  const pair = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  privateJwk = await exportJWK(pair.privateKey);
  publicJwk = await exportJWK(pair.publicKey);
});

const sign = (over: Partial<Parameters<typeof signRequest>[0]> = {}) =>
  signRequest({
    installationId,
    method: 'PUT',
    path: '/v1/dr/backup',
    bodySha256: EMPTY_BODY_SHA256,
    bodyLength: 0,
    privateJwk,
    now,
    ...over,
  });
const verify = (token: string, over: Partial<Parameters<typeof verifyRequest>[1]> = {}) =>
  verifyRequest(token, { publicJwk, method: 'PUT', path: '/v1/dr/backup', now, ...over });
const refusal = (p: Promise<unknown>) =>
  p.then(
    () => 'accepted',
    (e: SignatureError) => e.code,
  );

describe('request signatures', () => {
  it('round-trips the claims, and the empty-body constant is sha256 of nothing', async () => {
    expect(await sha256Hex(new Uint8Array(0))).toBe(EMPTY_BODY_SHA256);
    const token = await sign({ backupCreatedAt: '2026-11-28T11:00:00.000Z', jti: 'abcdefabcdefabcdef' });
    expect(tokenFromAuthorization(`GEM-Signature ${token}`)).toBe(token);
    expect(decodeUnverified(token).iss).toBe(installationId);
    expect(await verify(token)).toMatchObject({
      iss: installationId,
      mth: 'PUT',
      bln: 0,
      bca: '2026-11-28T11:00:00.000Z',
    });
  });

  it('refuses another method, path, body, an old or future issued-at', async () => {
    const token = await sign();
    expect(await refusal(verify(token, { method: 'DELETE' }))).toBe('wrong_method');
    expect(await refusal(verify(token, { path: '/v1/dr/uploads' }))).toBe('wrong_path');
    expect(await refusal(verify(token, { bodyLength: 1 }))).toBe('wrong_body');
    expect(await refusal(verify(token, { now: new Date(now.getTime() + 301_000) }))).toBe('expired');
    expect(await refusal(verify(token, { now: new Date(now.getTime() - 301_000) }))).toBe('from_the_future');
    expect(await refusal(verify(token, { now: new Date(now.getTime() + 299_000) }))).toBe('accepted');
  });

  it('accepts EdDSA only: none, HS256 with the public key, and a tampered payload are refused', async () => {
    const token = await sign();
    const [, payload] = token.split('.');
    const none = `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'gem-request+jwt' }))}.${payload}.`;
    expect(await refusal(verify(none))).toBe('bad_algorithm');
    const hs = await new CompactSign(base64url.decode(payload!))
      .setProtectedHeader({ alg: 'HS256', typ: 'gem-request+jwt' })
      .sign(new TextEncoder().encode(JSON.stringify(publicJwk)));
    expect(await refusal(verify(hs))).toBe('bad_algorithm');
    const claims = JSON.parse(new TextDecoder().decode(base64url.decode(payload!)));
    const tampered = token.replace(
      payload!,
      base64url.encode(JSON.stringify({ ...claims, pth: '/v1/recover' })),
    );
    expect(await refusal(verify(tampered, { path: '/v1/recover' }))).toBe('bad_signature');
    const other = await exportJWK(
      (await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true })).publicKey,
    );
    expect(await refusal(verify(token, { publicJwk: other }))).toBe('bad_signature');
    expect(await refusal(verify('not.a.jws!'))).toBe('malformed');
  });
});
