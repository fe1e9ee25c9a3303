/** The Cloud DR slot's metadata (a signed HEAD /v1/dr/backup), compared with what the last push recorded. */
import type { JWK } from 'jose';
import { SLOT_HEADERS } from '../../shared/api/cloud';
import { EMPTY_BODY_SHA256, SIGNATURE_SCHEME, signRequest } from '../../shared/signing';
import type { Agent } from '../agent';
import { sendRequest } from '../dr/http';
import { AppError } from '../errors';

export interface SlotMetadata {
  createdAt: string;
  size: number;
  sha256: string;
}

/** HEAD of the installation's slot; null if the cloud holds no backup for it. */
export async function headSlot(
  agent: Agent,
  baseUrl: string,
  timeoutMs = 30_000,
): Promise<SlotMetadata | null> {
  const path = '/v1/dr/backup';
  const token = await signRequest({
    installationId: agent.keyring.installationId,
    method: 'HEAD',
    path,
    bodySha256: EMPTY_BODY_SHA256,
    bodyLength: 0,
    privateJwk: agent.keyring.signingKey.privateJwk as JWK,
  });
  const url = new URL(`${baseUrl.replace(/\/+$/, '')}${path}`);
  let res: Awaited<ReturnType<typeof sendRequest>>;
  try {
    res = await sendRequest(url, {
      method: 'HEAD',
      headers: { authorization: `${SIGNATURE_SCHEME} ${token}` },
      timeoutMs,
    });
  } catch (error) {
    throw new AppError(
      'dependency_down',
      `the DR cloud at ${url.origin} is unreachable: ${(error as Error).message}`,
    );
  }
  res.body.resume();
  if (res.status === 404) return null;
  if (res.status !== 200)
    throw new AppError('dependency_down', `the DR cloud answered ${res.status} to HEAD ${path}`);
  const header = (name: string) => {
    const v = res.headers[name.toLowerCase()];
    return Array.isArray(v) ? v[0] : v;
  };
  return {
    createdAt: header(SLOT_HEADERS.createdAt) ?? '',
    size: Number(header(SLOT_HEADERS.size) ?? Number.NaN),
    sha256: header(SLOT_HEADERS.sha256) ?? '',
  };
}
