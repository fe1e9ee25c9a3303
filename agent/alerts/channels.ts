/** The alert channels the settings set up (each webhook, then e-mail when on): their names and keys, never their addresses. */
import { createHash } from 'node:crypto';
import type { Settings } from '../../shared/api/settings';
import { webhookChannelName } from './webhook';

type AlertSettings = Settings['alerts'];

/** One channel alerts go to, as the delivery state knows it (`key`) and as people read it (`name`). */
export type AlertChannel = { key: string; name: string } & (
  | { webhook: AlertSettings['webhooks'][number] }
  | { email: AlertSettings['email'] }
);

/** The channels `alerts` sets up, webhooks first, in the order they are sent to. */
export function alertChannels(alerts: AlertSettings): AlertChannel[] {
  const channels: AlertChannel[] = alerts.webhooks.map((webhook) => ({
    key: channelKey(`webhook\n${webhook.url}`),
    name: webhookChannelName(webhook.url),
    webhook,
  }));
  const { email } = alerts;
  if (email.enabled) {
    channels.push({
      key: channelKey(`e-mail\n${email.host}:${email.port}`),
      name: `e-mail via ${email.host}`,
      email,
    });
  }
  return channels;
}

/**
 * A channel's key in the delivery state: from its full address, which may hold a token, so hashed.
 * Another address is another channel (a changed webhook URL, e-mail through another server).
 */
function channelKey(identity: string): string {
  return createHash('sha256').update(identity).digest('hex').slice(0, 16);
}
