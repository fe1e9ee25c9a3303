/** AlertNotifier: evaluates health periodically and after each job, and tells webhooks and e-mail when an area changes. */
import { createHash } from 'node:crypto';
import { bareHost, type Settings } from '../../shared/api/settings';
import type { Agent } from '../agent';
import { describeError } from '../errors';
import type { AreaHealth, HealthArea, HealthReport, HealthStatus } from '../health/model';
import { HEALTH_AREAS } from '../health/model';
import type { HealthService } from '../health/service';
import { type AlertChannel, alertChannels } from './channels';
import { type SmtpOptions, sendMail } from './smtp';
import {
  type AlertState,
  AlertStateStore,
  type AreaAlertState,
  type DeliveryState,
  DeliveryStateStore,
  type EarlierAlert,
} from './state';
import { type Delivery, postWebhook } from './webhook';

/** What happened to an area: it turned warning/failing, it recovered, it is still failing a day later, or a test. */
type AlertEvent = 'warning' | 'failing' | 'recovered' | 'reminder' | 'test';

/** The JSON body every webhook receives. */
interface AlertPayload {
  type: 'gem-backup.alert';
  event: AlertEvent;
  area: HealthArea | 'test';
  status: HealthStatus;
  previousStatus: HealthStatus | null;
  reason: string;
  /**
   * Which installation this is, as a tag that cannot be turned back into the installation id: the id
   * itself recovers the keyring from the DR cloud, and an alert reaches people who must not hold it.
   */
  installationTag: string;
  at: string;
  overall: HealthStatus;
  details?: Record<string, unknown>;
  /**
   * Only on an alert raised before this channel was set up (or turned on) and still current, sent to
   * it once when it was: true, with `since`, when the area was first alerted (to the log, or to
   * another channel). `at` is when it was sent.
   */
  earlier?: true;
  since?: string;
}

interface AlertOptions {
  /** How often health is evaluated (default 1 min). */
  intervalMs?: number;
  /** A failing area is reminded about this often (default 24 h). */
  reminderMs?: number;
  /** While an alert channel keeps failing with the same error, the log is reminded this often (default 1 h). */
  channelReminderMs?: number;
  /** After a job ends, evaluate this much later (default 1 s) so its records are written. */
  afterJobDelayMs?: number;
  webhookTimeoutMs?: number;
  /** Extra SMTP options (a private CA; tests). */
  smtp?: Partial<SmtpOptions>;
  now?: () => Date;
}

interface AlertResult {
  area: HealthArea | 'test';
  event: AlertEvent;
  deliveries: Delivery[];
}

const SUBJECTS: Record<AlertEvent, string> = {
  warning: 'needs attention',
  failing: 'is failing',
  recovered: 'is back to normal',
  reminder: 'is still failing',
  test: 'test alert',
};

/** What an alert says, in short: the e-mail's subject, and in the log when it could not be delivered. */
function alertTitle(payload: AlertPayload): string {
  const area = payload.area === 'test' ? 'GEM Backup' : `GEM Backup: ${payload.area}`;
  const earlier = payload.earlier ? ' (earlier alert, raised before this channel was set up)' : '';
  return `[${payload.status.toUpperCase()}] ${area} ${SUBJECTS[payload.event]}${earlier}`;
}

export class AlertNotifier {
  readonly state: AlertStateStore;
  /** How the channels fared and which alerts wait for one: what the log was already told. */
  readonly delivery: DeliveryStateStore;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private unsubscribeSettings: (() => void) | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly afterJob = new Set<NodeJS.Timeout>();
  private deliveryStateFailed = false;
  /**
   * What was alerted (or first seen) but could not be saved (a full disk, the file's lock held by a
   * hung process): the checks go by it as if saved, so the alert is not sent again at every check, and
   * each check tries to save it. Only a restart before it is saved may send it again.
   */
  private unsaved: AlertState = {};
  private alertStateFailed = false;

  constructor(
    private readonly agent: Agent,
    private readonly health: HealthService,
    private readonly options: AlertOptions = {},
  ) {
    this.state = new AlertStateStore(agent.config.dataDir, agent.log);
    this.delivery = new DeliveryStateStore(agent.config.dataDir, agent.log);
  }

  /**
   * Records what the log was told about deliveries. Best effort: a state that cannot be saved (a full
   * disk) only means a failure may be told again; the alert itself is not held up (said once).
   */
  private async noteDelivery(change: (state: DeliveryState) => void): Promise<void> {
    try {
      await this.delivery.change(change);
    } catch (error) {
      if (this.deliveryStateFailed) return;
      this.deliveryStateFailed = true;
      this.agent.log.warn('the alert delivery state could not be saved; channel failures may be told again', {
        error: describeError(error),
      });
    }
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  /** Records what was alerted about `area`: saved if it can be, else kept by `unsaved` (said once). */
  private async remember(area: HealthArea, value: AreaAlertState): Promise<void> {
    this.unsaved[area] = value;
    await this.saveUnsaved();
  }

  /** Saves what `unsaved` holds; a failure leaves it there for the next check and does not stop this one. */
  private async saveUnsaved(): Promise<void> {
    const pending = this.unsaved;
    if (!Object.keys(pending).length) return;
    try {
      await this.state.update((state) => Object.assign(state, pending));
      this.unsaved = {};
      this.alertStateFailed = false;
    } catch (error) {
      if (this.alertStateFailed) return;
      this.alertStateFailed = true;
      this.agent.log.warn(
        'the alert state could not be saved; what was alerted is kept in memory and not sent again (a restart may send it again)',
        { error: describeError(error) },
      );
    }
  }

  /** What was last alerted per area: as saved, and what could not be saved yet. */
  private async alerted(): Promise<AlertState> {
    return { ...(await this.state.get()), ...this.unsaved };
  }

  /** Evaluates every `intervalMs` and shortly after each job ends. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.check(), this.options.intervalMs ?? 60_000);
    this.timer.unref();
    this.unsubscribe = this.agent.jobs.subscribeAll((event) => {
      if (event.type !== 'update' || !event.job.endedAt) return;
      const t = setTimeout(() => {
        this.afterJob.delete(t);
        void this.check();
      }, this.options.afterJobDelayMs ?? 1000);
      t.unref();
      this.afterJob.add(t);
    });
    // A channel set up (or turned on) gets the alerts still current now, not at the next check.
    this.unsubscribeSettings = this.agent.settings.subscribe((previous, next) => {
      const before = new Set(alertChannels(previous.alerts).map((c) => c.key));
      if (alertChannels(next.alerts).some((c) => !before.has(c.key))) void this.check();
    });
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.unsubscribe?.();
    this.unsubscribeSettings?.();
    for (const t of this.afterJob) clearTimeout(t);
    this.afterJob.clear();
  }

  /** Waits for checks already started (tests, shutdown). */
  async settled(): Promise<void> {
    await this.queue;
  }

  /**
   * Evaluates health and sends what changed: at most one alert per area per state change (the state
   * is saved once an alert is out, so a restart does not repeat it), and a reminder per day while failing.
   * Checks never overlap.
   */
  check(): Promise<AlertResult[]> {
    const run = this.queue.then(() => this.runCheck());
    this.queue = run.catch((error) =>
      this.agent.log.warn('the alert check failed', { error: describeError(error) }),
    );
    return run;
  }

  private async runCheck(): Promise<AlertResult[]> {
    const report = await this.health.evaluate();
    const sent: AlertResult[] = [];
    await this.saveUnsaved();
    const known = await this.alerted();
    const now = this.now();
    // Taken once: which delivery went to which channel, for the channels set up since the last check.
    const channels = alertChannels(this.agent.settings.get().alerts);
    const received = new Map<string, Set<HealthArea>>();
    for (const area of HEALTH_AREAS) {
      const current = report.areas[area];
      const last = known[area];
      const event = decide(
        current.status,
        last?.status ?? 'ok',
        last?.sentAt,
        now,
        this.options.reminderMs ?? 86_400_000,
      );
      if (!event) {
        // First sight of a healthy area: remember it quietly, so nothing is sent at start.
        if (!last)
          await this.remember(area, {
            status: current.status,
            reason: current.reason,
            sentAt: now.toISOString(),
            since: now.toISOString(),
          });
        // An alert still waiting for a channel is no longer due (the area went back to what was last sent).
        await this.noteDelivery((d) => {
          if (d.undelivered[area]) this.agent.log.debug('an undelivered alert is no longer due', { area });
          delete d.undelivered[area];
        });
        continue;
      }
      const payload = this.payload(area, event, current, last?.status ?? null, report);
      const deliveries = await this.deliver(payload, channels);
      deliveries.forEach((d, i) => {
        if (!d.ok) return;
        const areas = received.get(channels[i]!.key) ?? new Set();
        received.set(channels[i]!.key, areas.add(area));
      });
      // Nobody reached (every channel failed): keep the old state so the next check tries again.
      if (deliveries.length && deliveries.every((d) => !d.ok)) {
        await this.noteDelivery((d) => this.undelivered(d, payload));
        continue;
      }
      await this.remember(area, {
        status: current.status,
        reason: current.reason,
        sentAt: now.toISOString(),
        // A reminder is about the same status: it keeps since when.
        since: event === 'reminder' ? (last?.since ?? last?.sentAt) : now.toISOString(),
      });
      let waited: { undeliveredSince: string; attempts: number } | undefined;
      await this.noteDelivery((d) => {
        const u = d.undelivered[area];
        if (u) waited = { undeliveredSince: u.since, attempts: u.attempts + 1 };
        delete d.undelivered[area];
      });
      this.agent.log.info(
        deliveries.length ? 'alert sent' : 'health changed; no alert channel is configured',
        {
          area,
          event,
          status: current.status,
          alert: alertTitle(payload),
          deliveries: deliveries.length,
          ...waited,
        },
      );
      sent.push({ area, event, deliveries });
    }
    await this.tellNewChannels(channels, report, received);
    return sent;
  }

  /**
   * A channel set up (or turned on) since the last check is sent, once, the alerts still current that
   * it did not receive: each area that is not ok, as last alerted (to another channel, or to none while
   * none was set up), marked `earlier`. At most one alert per area; what it received is recorded per
   * alert (`earlierSent`, as each one gets through), so a channel that fails part-way is sent only the
   * others at the next check. The channels found at the first check since this is kept (a new
   * installation, an upgrade) count as told: they had every alert.
   */
  private async tellNewChannels(
    channels: AlertChannel[],
    report: HealthReport,
    received: Map<string, Set<HealthArea>>,
  ): Promise<void> {
    const saved = await this.delivery.current();
    const told = saved.toldChannels;
    const keys = channels.map((c) => c.key);
    if (told === undefined) {
      await this.noteDelivery((d) => {
        d.toldChannels = keys;
      });
      return;
    }
    const alerted = await this.alerted();
    const nowTold: string[] = [];
    for (const channel of channels.filter((c) => !told.includes(c.key))) {
      const current = HEALTH_AREAS.filter(
        (area) => report.areas[area].status !== 'ok' && alerted[area]?.status === report.areas[area].status,
      );
      const alertOf = (area: HealthArea): EarlierAlert => ({
        status: alerted[area]!.status,
        since: alerted[area]!.since ?? alerted[area]!.sentAt,
      });
      const had = saved.earlierSent?.[channel.key] ?? {};
      const record = (areas: HealthArea[]) =>
        this.noteDelivery((d) => {
          const all = d.earlierSent ?? {};
          const sent = all[channel.key] ?? {};
          for (const area of areas) sent[area] = alertOf(area);
          all[channel.key] = sent;
          d.earlierSent = all;
        });
      // What it received at this check (an alert to every channel) it has: kept, should a later one fail.
      const justReceived = current.filter((area) => received.get(channel.key)?.has(area));
      if (justReceived.length) await record(justReceived);
      let ok = true;
      for (const area of current) {
        if (justReceived.includes(area)) continue;
        const before = had[area];
        if (before && before.status === alertOf(area).status && before.since === alertOf(area).since)
          continue;
        const health = report.areas[area];
        const payload: AlertPayload = {
          ...this.payload(area, health.status as AlertEvent, health, null, report),
          earlier: true,
          since: alertOf(area).since,
        };
        const [delivery] = await this.deliver(payload, channels, [channel]);
        ok = delivery!.ok;
        if (!ok) break;
        await record([area]);
        this.agent.log.info('an earlier alert sent to a new channel', {
          area,
          channel: channel.name,
          alert: alertTitle(payload),
          since: payload.since,
        });
      }
      if (ok) nowTold.push(channel.key);
    }
    // Channels no longer set up are forgotten: set up again, they are told again.
    await this.noteDelivery((d) => {
      d.toldChannels = keys.filter((k) => told.includes(k) || nowTold.includes(k));
      for (const key of Object.keys(d.earlierSent ?? {})) {
        if (!keys.includes(key) || d.toldChannels.includes(key)) delete d.earlierSent![key];
      }
      if (d.earlierSent && !Object.keys(d.earlierSent).length) delete d.earlierSent;
    });
  }

  /** Sends a test alert to every configured channel now; the result says which ones received it. */
  async sendTest(): Promise<AlertResult> {
    const report = this.health.lastReport();
    const payload: AlertPayload = {
      type: 'gem-backup.alert',
      event: 'test',
      area: 'test',
      status: 'ok',
      previousStatus: null,
      reason: 'This is a test alert from GEM Backup & Restore: alerts reach you.',
      installationTag: installationTag(this.agent.keyring.installationId),
      at: this.now().toISOString(),
      overall: report?.status ?? 'ok',
    };
    return { area: 'test', event: 'test', deliveries: await this.deliver(payload) };
  }

  private payload(
    area: HealthArea,
    event: AlertEvent,
    current: AreaHealth,
    previous: HealthStatus | null,
    report: HealthReport,
  ): AlertPayload {
    const { status, reason, ...details } = current;
    return {
      type: 'gem-backup.alert',
      event,
      area,
      status,
      previousStatus: previous,
      reason,
      installationTag: installationTag(this.agent.keyring.installationId),
      at: this.now().toISOString(),
      overall: report.status,
      details,
    };
  }

  /**
   * An alert no channel received: said once at warn with what it is about; its retries at the next
   * checks only at debug (each failing channel has its own line, at most hourly).
   */
  private undelivered(d: DeliveryState, payload: AlertPayload): void {
    const area = payload.area as HealthArea;
    const u = d.undelivered[area];
    if (u && u.event === payload.event && u.status === payload.status) {
      u.attempts += 1;
      this.agent.log.debug('an alert is still undelivered', {
        area,
        event: payload.event,
        attempts: u.attempts,
      });
      return;
    }
    d.undelivered[area] = { event: payload.event, status: payload.status, since: payload.at, attempts: 1 };
    this.agent.log.warn('an alert could not be delivered; retrying at the next check', {
      area,
      event: payload.event,
      alert: alertTitle(payload),
      detail: payload.reason,
    });
  }

  /**
   * Sends to `to` (every channel set up: each webhook and, if on, e-mail); one channel failing does not
   * stop the others. The deliveries are in the order of `to`.
   */
  private async deliver(
    payload: AlertPayload,
    channels = alertChannels(this.agent.settings.get().alerts),
    to = channels,
  ): Promise<Delivery[]> {
    const body = JSON.stringify(payload);
    const deliveries = await Promise.all(
      to.map((c) =>
        'webhook' in c
          ? // Signed at the real time (not the injectable clock): receivers compare it with theirs.
            postWebhook(c.webhook.url, c.webhook.secret ?? '', body, {
              timeoutMs: this.options.webhookTimeoutMs ?? 10_000,
            })
          : this.email(c.email, payload),
      ),
    );
    const keys = channels.map((c) => c.key);
    await this.noteDelivery((state) => {
      // A channel no longer configured is forgotten (changed, it is a new channel).
      for (const key of Object.keys(state.channels)) if (!keys.includes(key)) delete state.channels[key];
      deliveries.forEach((d, i) => {
        this.channelResult(state, to[i]!.key, d, payload);
      });
    });
    return deliveries;
  }

  /**
   * Tells the log how a channel fared, without repeating itself: its first failure (with the alert it
   * could not carry), a new error, a reminder at most every `channelReminderMs` while it keeps failing
   * (retries in between at debug), and once that it works again.
   */
  private channelResult(state: DeliveryState, key: string, d: Delivery, payload: AlertPayload): void {
    const log = this.agent.log;
    const known = state.channels[key];
    const alert = alertTitle(payload);
    if (d.ok) {
      if (known) {
        log.info('an alert channel works again', {
          channel: d.channel,
          failingSince: known.since,
          failedAttempts: known.attempts,
        });
      }
      delete state.channels[key];
      return;
    }
    const error = d.error ?? 'unknown error';
    const now = this.now();
    const at = now.toISOString();
    if (!known) {
      state.channels[key] = { channel: d.channel, since: at, error, attempts: 1, toldAt: at };
      log.warn('an alert channel failed', { channel: d.channel, error, alert, detail: payload.reason });
      return;
    }
    known.attempts += 1;
    known.channel = d.channel;
    const fields = { channel: d.channel, error, failingSince: known.since, attempts: known.attempts, alert };
    if (known.error !== error) {
      log.warn('an alert channel failed', { ...fields, previousError: known.error, detail: payload.reason });
      known.error = error;
      known.toldAt = at;
    } else if (now.getTime() - Date.parse(known.toldAt) >= (this.options.channelReminderMs ?? 3_600_000)) {
      log.warn('an alert channel is still failing', fields);
      known.toldAt = at;
    } else {
      log.debug('an alert channel failed again', fields);
    }
  }

  private async email(email: Settings['alerts']['email'], payload: AlertPayload): Promise<Delivery> {
    const channel = `e-mail via ${email.host}`;
    try {
      await sendMail(
        {
          host: bareHost(email.host),
          port: email.port,
          secure: email.secure,
          ...(email.username ? { username: email.username, password: email.password ?? '' } : {}),
          ...this.options.smtp,
        },
        {
          from: email.from,
          to: email.to,
          subject: alertTitle(payload),
          text: [
            payload.reason,
            '',
            `Area: ${payload.area}`,
            `Status: ${payload.status}${payload.previousStatus ? ` (was ${payload.previousStatus})` : ''}`,
            `Installation: ${payload.installationTag}`,
            `At: ${payload.at}`,
            ...(payload.earlier
              ? [`Earlier alert: raised ${payload.since}, before this channel was set up, and still current`]
              : []),
          ].join('\n'),
        },
      );
      return { channel, ok: true };
    } catch (error) {
      return { channel, ok: false, error: (error as Error).message };
    }
  }
}

/**
 * A short, non-reversible name of the installation for alerts: the first 12 hex characters of
 * sha256("gem-installation-tag:" + id). Stable, so receivers can tell installations apart.
 */
export function installationTag(installationId: string): string {
  return createHash('sha256').update(`gem-installation-tag:${installationId}`).digest('hex').slice(0, 12);
}

/** The rule: which event (if any) an area's current status calls for, given what was last alerted. */
function decide(
  current: HealthStatus,
  last: HealthStatus,
  lastSentAt: string | undefined,
  now: Date,
  reminderMs: number,
): AlertEvent | undefined {
  if (current !== last) return current === 'ok' ? 'recovered' : current;
  if (current === 'failing' && lastSentAt && now.getTime() - Date.parse(lastSentAt) >= reminderMs) {
    return 'reminder';
  }
  return undefined;
}

const notifiers = new WeakMap<Agent, AlertNotifier>();

/** The agent's one notifier (options apply on first use). */
export function alertsFor(agent: Agent, health: HealthService, options?: AlertOptions): AlertNotifier {
  let n = notifiers.get(agent);
  if (!n) {
    n = new AlertNotifier(agent, health, options);
    notifiers.set(agent, n);
  }
  return n;
}
