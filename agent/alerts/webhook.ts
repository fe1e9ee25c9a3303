/** Sends one alert to one webhook: JSON, signed, with a timeout; a refusal or no answer is a failed delivery. */
import { SIGNATURE_HEADER, signAlert } from './signature';

/** How logs, health and Test alert name a webhook: by its origin only (its path may hold a token). */
export function webhookChannelName(url: string): string {
  try {
    return `webhook ${new URL(url).origin}`;
  } catch {
    return 'webhook';
  }
}

export interface Delivery {
  channel: string;
  ok: boolean;
  error?: string;
}

/**
 * POSTs `body` (already JSON) to `url`, signed with `secret`. Never throws: the result says what
 * happened. The result (logged, and shown by Test alert) names the webhook by its origin only: a
 * user name and password in the address, or a token in its path (Slack, Teams), stay out of it.
 */
export async function postWebhook(
  url: string,
  secret: string,
  body: string,
  options: { timeoutMs?: number; now?: () => Date } = {},
): Promise<Delivery> {
  let address: URL;
  try {
    address = new URL(url);
  } catch {
    return { channel: 'webhook', ok: false, error: 'the webhook address is not a valid URL' };
  }
  const channel = webhookChannelName(url);
  // fetch refuses such an address with an error that repeats it whole, password included.
  if (address.username || address.password) {
    return {
      channel,
      ok: false,
      error:
        'the webhook address holds a user name or password, which is never sent: remove it from the address (each alert is signed with the webhook secret)',
    };
  }
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
    // The answer's body is not needed: cancelled, never read (a body without end would fill memory).
    await res.body?.cancel().catch(() => undefined);
    if (!res.ok) return { channel, ok: false, error: `the webhook answered ${res.status}` };
    return { channel, ok: true };
  } catch (error) {
    const cause = (error as { cause?: { message?: string } }).cause?.message;
    return {
      channel,
      ok: false,
      error: withoutAddress(cause ?? String((error as Error)?.message), url, address),
    };
  }
}

/** `text` with the webhook's full address cut to its origin, and its path and query (maybe a token) left out. */
function withoutAddress(text: string, raw: string, address: URL): string {
  let out = text;
  for (const whole of [raw, address.href]) out = out.split(whole).join(address.origin);
  const rest = `${address.pathname}${address.search}`;
  return rest.length > 1 ? out.split(rest).join('/…') : out;
}
