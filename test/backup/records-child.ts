/**
 * A process beside the test that records backups in one catalog's records file
 * (test/backup/catalog-records.test.ts): it says `ready`, waits for a line on stdin (so that all start
 * together), records COUNT backups of its own through BackupCatalog.updateRecord, says `done` and exits.
 */
import { once } from 'node:events';
import { join } from 'node:path';
import { BackupCatalog } from '../../agent/backup/catalog';

const [dir, count] = process.argv.slice(2);
const catalog = new BackupCatalog(join(dir!, 'backups'), join(dir!, 'records.json'));
await catalog.init();
process.stdout.write('ready\n');
await once(process.stdin, 'data');
for (let i = 0; i < Number(count); i++) {
  await catalog.updateRecord(`p${process.pid}-${i}`, { verifyResult: 'ok' });
}
process.stdout.write('done\n');
process.exit(0);
