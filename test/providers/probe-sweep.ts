// Test Connection's leftovers in a destination's folder, written on the server's disk: a provider's temp
// sweep removes them as its own, by the same age rule as its upload temps, and never a look-alike.
import { readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { probeName } from '../../agent/offsite/connection';
import { tempNameFor } from '../../agent/providers/checks';
import type { StorageProvider } from '../../shared/storage/index';

/**
 * Writes a probe (an hour old), a probe's temp and three look-alikes into `folder` (the destination's folder
 * on disk, which holds only `backup`); checks that a sweep with a ten-minute age limit removes only the probe,
 * one without a limit then the temp, and that the look-alikes stay.
 */
export async function expectProbeLeftoversSwept(
  provider: Required<Pick<StorageProvider, 'sweepTemp'>>,
  folder: string,
  backup: string,
): Promise<void> {
  const probe = probeName();
  const probeTemp = tempNameFor(probeName());
  const lookAlikes = [
    'gem-connection-test-notes.probe',
    `${probe}.txt`,
    '.tmp-gem-connection-test-x.probe.1',
  ];
  for (const file of [probe, probeTemp, ...lookAlikes]) await writeFile(join(folder, file), 'probe');
  const hourAgo = new Date(Date.now() - 3600_000);
  await utimes(join(folder, probe), hourAgo, hourAgo);
  expect(await provider.sweepTemp({ olderThanMs: 10 * 60_000 })).toEqual({ removed: [probe] });
  expect(await provider.sweepTemp()).toEqual({ removed: [probeTemp] });
  expect((await readdir(folder)).sort()).toEqual([backup, ...lookAlikes].sort());
}
