/** Sends one alert to one webhook: JSON, signed, with a timeout; a refusal or no answer is a failed delivery. */
import { SIGNATURE_HEADER, signAlert } from './signature';

export interface Delivery {
  channel: string;
  ok: boolean;
  error?: string;
}

/** POSTs `body` (already JSON) to `url`, signed with `secret`. Never throws: the result says what happened. */
export async function postWebhook(
  url: string,
  secret: string,
  body: string,
  options: { timeoutMs?: number; now?: () => Date } = {},
): Promise<Delivery> {
  const channel = `webhook ${new URL(url).origin}`;
  const t = Math.floor((options.now?.() ?? new Date()).getTime() / 1000);
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'user-agent': 'gem-backup-agent',
        [SIGNATURE_HEADER]: signAlert(secret, body, t),
      },
      body,
      redirect: 'error',
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
    await res.arrayBuffer().catch(() => undefined);
    if (!res.ok) return { channel, ok: false, error: `the webhook answered ${res.status}` };
    return { channel, ok: true };
  } catch (error) {
    const cause = (error as { cause?: { message?: string } }).cause?.message;
    return { channel, ok: false, error: cause ?? (error as Error).message };
  }
}
