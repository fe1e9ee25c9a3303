/** HealthService: evaluates every area's source and reports the worst; one per agent, with its watchdog. */
import type { Agent } from '../agent';
import { DeliveryStateStore } from '../alerts/state';
import { drServiceFor } from '../dr/service';
import { describeError } from '../errors';
import { connectionFailure, connectionWords } from '../http/errors';
import { offsiteServiceFor } from '../offsite/service';
import { verificationStateFor } from '../verification/state';
import {
  type AreaHealth,
  type AreaSource,
  HEALTH_AREAS,
  type HealthArea,
  type HealthReport,
  worst,
} from './model';
import {
  alertsArea,
  backupsArea,
  diskArea,
  drArea,
  type FreeSpace,
  jobsArea,
  keysArea,
  offsiteArea,
  verificationArea,
} from './sources';
import { HealthStateStore } from './state';
import { JobWatchdog, type WatchdogThresholds } from './watchdog';

interface HealthOptions {
  watchdog?: Partial<WatchdogThresholds>;
  /** How often an offsite destination is contacted at most (default 5 min; 0 = on every evaluation). */
  offsiteProbeIntervalMs?: number;
  freeSpace?: FreeSpace;
  /** Replaces an area's source (tests, or a future better one). */
  sources?: Partial<Record<HealthArea, AreaSource>>;
  now?: () => Date;
}

export class HealthService {
  readonly watchdog: JobWatchdog;
  private readonly sources: Record<HealthArea, AreaSource>;
  private last: HealthReport | undefined;

  constructor(
    private readonly agent: Agent,
    private readonly options: HealthOptions = {},
  ) {
    this.watchdog = new JobWatchdog(agent.jobs, options.watchdog, () => this.now().getTime()).start();
    const verification = verificationStateFor(agent);
    this.sources = {
      backups: backupsArea(agent),
      offsite: offsiteArea(agent, offsiteServiceFor(agent), verification, {
        probeIntervalMs: options.offsiteProbeIntervalMs ?? 5 * 60_000,
      }),
      dr: drArea(
        drServiceFor(agent),
        new HealthStateStore(`${agent.config.dataDir}/health-state.json`, agent.log),
      ),
      verification: verificationArea(agent, verification),
      disk: diskArea(agent, options.freeSpace),
      keys: keysArea(agent),
      jobs: jobsArea(agent, this.watchdog),
      alerts: alertsArea(agent, new DeliveryStateStore(agent.config.dataDir, agent.log)),
      ...options.sources,
    };
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  /** Evaluates every area now; an area whose source throws is reported failing with the error. */
  async evaluate(): Promise<HealthReport> {
    const now = this.now();
    const entries = await Promise.all(
      HEALTH_AREAS.map(async (area): Promise<[HealthArea, AreaHealth]> => {
        try {
          return [area, await this.sources[area](now)];
        } catch (error) {
          const e = describeError(error);
          this.agent.log.warn('a health check failed', { area, error: e });
          // The agent's own state lives in GEM's database: an area that could not read it says so,
          // with the cause in a few words (never the query it ran or its parameters).
          const lost = connectionFailure(error);
          const reason = lost
            ? `GEM's database is unreachable (${connectionWords(lost)})`
            : `The ${area} check failed: ${e.message}`;
          return [area, { status: 'failing', reason }];
        }
      }),
    );
    const areas = Object.fromEntries(entries) as Record<HealthArea, AreaHealth>;
    this.last = {
      status: worst(entries.map(([, a]) => a.status)),
      checkedAt: now.toISOString(),
      areas,
    };
    return this.last;
  }

  /** The last report evaluated (metrics read it without contacting destinations again). */
  lastReport(): HealthReport | undefined {
    return this.last;
  }

  stop(): void {
    this.watchdog.stop();
  }
}

const services = new WeakMap<Agent, HealthService>();

/** The agent's one health service (options apply on first use: tests pass short thresholds). */
export function healthFor(agent: Agent, options?: HealthOptions): HealthService {
  let service = services.get(agent);
  if (!service) {
    service = new HealthService(agent, options);
    services.set(agent, service);
  }
  return service;
}
