/** The scheduled verification's memory (verification-state.json in the data dir): last run and each target's last result. */
import { join } from 'node:path';
import type { Logger } from '../log';
import {
  type DestinationSettings,
  destinationLabel,
  OFFSITE_KINDS,
  type OffsiteKind,
} from '../offsite/destinations';
import { JsonStateFile } from '../system/json-state';

/** Where a verified copy lives: the local folder, an offsite destination, or the Cloud DR slot. */
export type VerificationTarget = 'local' | 'sftp' | 's3' | 'smb' | 'cloud';

/** One target's result in one run. */
export interface TargetResult {
  target: VerificationTarget;
  at: string;
  ok: boolean;
  /** The backup that was checked (its name at the destination). */
  filename?: string;
  /** What was checked: the full content (decrypt + every checksum) or the slot's metadata. */
  check: 'full' | 'metadata' | 'none';
  /** Nothing to check there (no backup yet, destination off): not a failure. */
  skipped?: string;
  error?: { code: string; message: string };
  details?: Record<string, unknown>;
  /** An offsite target's place when it was checked (destinationLabel): absent in earlier versions' files. */
  destination?: string;
}

interface VerificationRun {
  jobId: string;
  startedAt: string;
  endedAt: string;
  ok: boolean;
  results: TargetResult[];
}

interface VerificationState {
  /** When the schedule was first armed: the "overdue" baseline before the first run. */
  armedAt?: string;
  lastRun?: VerificationRun;
  /** Each target's newest result (a run that skipped a target keeps its older result if that was ok). */
  targets: Partial<Record<VerificationTarget, TargetResult>>;
}

/** The settings that say which copies exist now, and where. */
interface TargetSettings {
  offsite: { [K in OffsiteKind]: DestinationSettings<K> };
  cloudDr: { enabled: boolean };
}

/** The copies whose verification counts now: local, each enabled offsite destination, the Cloud DR slot while it is on. */
export function activeTargets(settings: TargetSettings): Set<VerificationTarget> {
  const active = new Set<VerificationTarget>(['local']);
  for (const kind of OFFSITE_KINDS) if (settings.offsite[kind].enabled) active.add(kind);
  if (settings.cloudDr.enabled) active.add('cloud');
  return active;
}

/**
 * The recorded results of the copies that count now: a destination turned off (or Cloud DR after
 * the opt-out) keeps no verdict, nor one now pointing to another place (another server, bucket or
 * folder) than the copy checked, so an old failure there never keeps health failing.
 */
export function currentTargetResults(
  state: VerificationState,
  settings: TargetSettings,
): Partial<Record<VerificationTarget, TargetResult>> {
  const active = activeTargets(settings);
  return Object.fromEntries(
    Object.entries(state.targets).filter(
      ([target, result]) => active.has(target as VerificationTarget) && !checkedElsewhere(result, settings),
    ),
  ) as Partial<Record<VerificationTarget, TargetResult>>;
}

/** Whether an offsite target's result is of another place than its destination's settings name now. */
function checkedElsewhere(result: TargetResult | undefined, settings: TargetSettings): boolean {
  if (result?.destination === undefined || !isOffsiteKind(result.target)) return false;
  return result.destination !== destinationLabel(result.target, settings.offsite[result.target]);
}

function isOffsiteKind(target: VerificationTarget): target is OffsiteKind {
  return (OFFSITE_KINDS as readonly string[]).includes(target);
}

const VERIFICATION_STATE_FILE = 'verification-state.json';

/** Reads and updates verification-state.json; updates are serialized and written temp-then-rename. */
export class VerificationStateStore extends JsonStateFile<VerificationState> {
  /** Damaged, it is set aside (told to `log`): the next scheduled verification runs as if none had. */
  constructor(dataDir: string, log: Logger) {
    super(join(dataDir, VERIFICATION_STATE_FILE), () => ({ targets: {} }), { setAsideDamaged: { log } });
  }
}

const stores = new WeakMap<object, VerificationStateStore>();

/** The one store per agent (keyed by the agent object), so every reader sees the same cache. */
export function verificationStateFor(agent: {
  config: { dataDir: string };
  log: Logger;
}): VerificationStateStore {
  let store = stores.get(agent);
  if (!store) {
    store = new VerificationStateStore(agent.config.dataDir, agent.log);
    stores.set(agent, store);
  }
  return store;
}
