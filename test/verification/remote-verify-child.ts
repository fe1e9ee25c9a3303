/**
 * A process beside the test that records one offsite target's verification results on a backup's
 * record (test/verification/remote-verify-records.test.ts), as a verification in the service or the
 * CLI does: it says `ready`, then for each line `<round>` on stdin records a result at `<round>` through
 * recordRemoteVerify and says `done <round>`.
 */

import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BackupCatalog } from '../../agent/backup/catalog';
import { recordRemoteVerify } from '../../agent/verification/run';
import type { VerificationTarget } from '../../agent/verification/state';

const [dir, filename, target] = process.argv.slice(2);
const catalog = new BackupCatalog(join(dir!, 'backups'), join(dir!, 'records.json'));
await catalog.init();
process.stdout.write('ready\n');
for await (const round of createInterface({ input: process.stdin })) {
  await recordRemoteVerify(catalog, filename!, {
    target: target as VerificationTarget,
    at: round,
    ok: true,
    check: 'full',
    filename,
  });
  process.stdout.write(`done ${round}\n`);
}
process.exit(0);
