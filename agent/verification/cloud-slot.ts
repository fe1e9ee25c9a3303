/** The Cloud DR slot's metadata (a signed HEAD /v1/dr/backup), compared with what the last push recorded. */
import type { JWK } from 'jose';
import { SLOT_HEADERS } from '../../shared/api/cloud';
import { EMPTY_BODY_SHA256, SIGNATURE_SCHEME, signRequest } from '../../shared/signing';
import type { Agent } from '../agent';
import { sendRequest } from '../dr/http';
import { AppError } from '../errors';

interface SlotMetadata {
  createdAt: string;
  size: number;
  sha256: string;
}

/** HEAD of the installation's slot; null if the cloud holds no backup for it. `signal` gives it up. */
export async function headSlot(
  agent: Agent,
  baseUrl: string,
  timeoutMs = 30_000,
  signal?: AbortSignal,
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
      ...(signal ? { signal } : {}),
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

/** What the last successful push recorded about the bytes it sent (older records lack sha256 and createdAt). */
interface PushedCopy {
  size?: number | undefined;
  sha256?: string | undefined;
  createdAt?: string | undefined;
}

/**
 * How the slot differs from what was pushed, one sentence per field (empty when they agree): size,
 * created-at and sha256, each compared when the push recorded it. A slot replaced behind the agent's
 * back by other bytes shows here even when its size happens to match.
 */
export function slotDifferences(slot: SlotMetadata | null, pushed: PushedCopy): string[] {
  if (!slot) return ['the cloud holds no backup for this installation'];
  const problems: string[] = [];
  if (pushed.size !== undefined && slot.size !== pushed.size) {
    problems.push(`size differs: the cloud copy is ${slot.size} bytes, ${pushed.size} were pushed`);
  }
  if (pushed.createdAt && slot.createdAt !== pushed.createdAt) {
    problems.push(
      `created-at differs: the cloud copy was made at ${slot.createdAt}, the pushed backup at ${pushed.createdAt}`,
    );
  }
  if (pushed.sha256 && slot.sha256 !== pushed.sha256) {
    problems.push(
      `sha256 differs: the cloud copy is ${short(slot.sha256)}…, the pushed bytes were ${short(pushed.sha256)}…`,
    );
  }
  return problems;
}

function short(hex: string): string {
  return hex.slice(0, 12) || '(none)';
}
