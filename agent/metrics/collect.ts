/** The agent's metrics in the Prometheus text format: backups, destinations, jobs, verification and health. */
import type { Agent } from '../agent';
import { newestGoodBackup } from '../backup/catalog';
import { drServiceFor } from '../dr/service';
import { HEALTH_AREAS, statusRank } from '../health/model';
import type { HealthService } from '../health/service';
import { OFFSITE_KINDS } from '../offsite/destinations';
import { offsiteServiceFor } from '../offsite/service';
import { currentTargetResults, verificationStateFor } from '../verification/state';
import type { MetricsRecorder } from './recorder';
import { MetricsText, type Sample } from './text-format';

const seconds = (iso: string | undefined) => (iso ? Date.parse(iso) / 1000 : undefined);

function samples<T>(items: T[], f: (item: T) => Sample | undefined): Sample[] {
  return items.map(f).filter((s): s is Sample => s !== undefined);
}

/** Renders every metric; reads records only (no destination is contacted, health is the last evaluation). */
export async function collectMetrics(
  agent: Agent,
  recorder: MetricsRecorder,
  health?: HealthService,
): Promise<string> {
  const m = new MetricsText();
  const backups = await agent.catalog.list();
  // As health judges it: a newer backup that failed verification, or is not ours, is no last success.
  const newest = newestGoodBackup(backups, (id, keyIds) => agent.keyring.owns(id, keyIds), Date.now());
  m.family('gem_backup_local_backups', 'gauge', 'Backups in the local folder.', [{ value: backups.length }]);
  m.family('gem_backup_local_bytes', 'gauge', 'Bytes of all local backups.', [
    { value: backups.reduce((n, b) => n + b.size, 0) },
  ]);
  m.family('gem_backup_pinned_backups', 'gauge', 'Local backups pinned (never pruned).', [
    { value: backups.filter((b) => b.pinned).length },
  ]);
  m.family(
    'gem_backup_last_backup_size_bytes',
    'gauge',
    'Size of the newest good local backup (verification not failed, ours).',
    [{ value: newest?.size ?? 0 }],
  );
  m.family(
    'gem_backup_last_backup_timestamp_seconds',
    'gauge',
    'When the newest good local backup was made (verification not failed, ours).',
    [{ value: seconds(newest?.createdAt) ?? 0 }],
  );
  m.family('gem_backup_last_backup_duration_seconds', 'gauge', 'How long the last backup job took.', [
    { value: recorder.lastBackup?.durationSeconds ?? 0 },
  ]);
  m.histogram(
    'gem_backup_backup_duration_seconds',
    'Backup job durations (since start).',
    recorder.backupDuration.snapshot(),
  );
  m.histogram(
    'gem_backup_backup_size_bytes',
    'Sizes of backups made (since start).',
    recorder.backupSize.snapshot(),
  );

  // Last success per destination: local (newest good backup), each offsite destination (last upload), the cloud slot.
  // Only destinations that are on, as health judges them: the records of one turned off would alert for ever.
  const offsite = await offsiteServiceFor(agent).status();
  const offsiteOn = OFFSITE_KINDS.filter((kind) => offsite[kind].enabled);
  const dr = await drServiceFor(agent).status();
  const lastSuccess: Sample[] = [];
  if (newest) lastSuccess.push({ labels: { destination: 'local' }, value: seconds(newest.createdAt)! });
  for (const kind of offsiteOn) {
    const at = seconds(offsite[kind].lastSuccessfulUpload?.at);
    if (at !== undefined) lastSuccess.push({ labels: { destination: kind }, value: at });
  }
  const drAt = dr.enabled ? seconds(dr.lastSuccess?.at) : undefined;
  if (drAt !== undefined) lastSuccess.push({ labels: { destination: 'cloud' }, value: drAt });
  m.family(
    'gem_backup_destination_last_success_timestamp_seconds',
    'gauge',
    'When a backup last reached each destination.',
    lastSuccess,
  );
  m.family(
    'gem_backup_destination_last_upload_ok',
    'gauge',
    'Whether the last upload to each destination succeeded (1) or failed (0).',
    samples(offsiteOn, (kind) => {
      const u = offsite[kind].lastUpload;
      return u ? { labels: { destination: kind }, value: u.ok ? 1 : 0 } : undefined;
    }).concat(
      dr.enabled && dr.lastPush && dr.lastPush.outcome !== 'skipped'
        ? [{ labels: { destination: 'cloud' }, value: dr.lastPush.outcome === 'succeeded' ? 1 : 0 }]
        : [],
    ),
  );
  m.family(
    'gem_backup_uploaded_bytes_total',
    'counter',
    'Bytes uploaded to each destination since the agent started.',
    [...recorder.uploadedBytes].map(([destination, value]) => ({ labels: { destination }, value })),
  );
  m.family(
    'gem_backup_jobs_total',
    'counter',
    'Jobs ended since the agent started, by kind and outcome.',
    [...recorder.jobCounts].map(([key, value]) => {
      const [kind, outcome] = key.split('\u0000');
      return { labels: { kind: kind!, outcome: outcome! }, value };
    }),
  );
  m.family('gem_backup_jobs_running', 'gauge', 'Jobs running now.', [{ value: agent.jobs.active().length }]);

  const verification = await verificationStateFor(agent).get();
  // Only copies that exist now: a destination turned off (or Cloud DR opted out) has no verdict.
  const targets = Object.values(currentTargetResults(verification, agent.settings.get())).filter(
    (t) => t && !t.skipped,
  );
  m.family(
    'gem_backup_verification_last_timestamp_seconds',
    'gauge',
    'When each copy (local, offsite destination, cloud) was last verified.',
    targets.map((t) => ({ labels: { target: t!.target }, value: Date.parse(t!.at) / 1000 })),
  );
  m.family(
    'gem_backup_verification_ok',
    'gauge',
    'Whether the last verification of each copy passed (1) or failed (0).',
    targets.map((t) => ({ labels: { target: t!.target }, value: t!.ok ? 1 : 0 })),
  );

  const report = health?.lastReport() ?? (health ? await health.evaluate() : undefined);
  if (report) {
    m.family(
      'gem_backup_health_status',
      'gauge',
      'Health per area: 0 ok, 1 warning, 2 failing.',
      HEALTH_AREAS.map((area) => ({ labels: { area }, value: statusRank(report.areas[area].status) })),
    );
  }
  return m.toString();
}
