/** CLI: gem-backup list [--json] [--from sftp|s3|smb]: the local backups (or a destination's), newest first. */
import { parseArgs } from 'node:util';
import type { ListedBackup } from '../http/routes/backups';
import { DESTINATION_TITLES, type OffsiteKind, parseOffsiteKind } from '../offsite/destinations';
import type { RemoteBackup } from '../offsite/service';
import type { CliContext } from './context';
import { formatSize } from './format';

/** The table's columns; a row on a pipe is the one scripts have always parsed (no header, no padding). */
const HEADER = { filename: 'BACKUP', createdAt: 'CREATED', size: 'SIZE', kind: 'KIND' };
const SIZE_WIDTH = 10;

interface Widths {
  filename: number;
  createdAt: number;
  size: number;
}

/** A backup of another installation than the active keys' (after a keys import: this box's own from before it). */
const otherInstallation = (b: { installation?: string; ofThisInstallation?: boolean }): string =>
  b.installation && b.ofThisInstallation === false ? `  another installation (${b.installation}…)` : '';

function row(b: ListedBackup, w: Widths): string {
  return `${b.filename.padEnd(w.filename)}  ${b.createdAt.padEnd(w.createdAt)}  ${formatSize(b.size).padStart(w.size)}  ${b.kind}${b.pinned ? ' pinned' : ''}${b.label ? ` "${b.label}"` : ''}${otherInstallation(b)}`;
}

/**
 * `list`: one row per backup (one of another installation marked as `list --from` marks it), and on a
 * terminal a header line over aligned columns. `list --json`:
 * one JSON array, exactly what GET /api/v1/backups answers (the same function builds it), sizes in bytes.
 */
export async function listCommand(cli: CliContext): Promise<void> {
  const { values } = parseArgs({
    args: cli.args,
    allowPositionals: false,
    options: { json: { type: 'boolean' }, from: { type: 'string' } },
  });
  if (values.from !== undefined) {
    await listRemote(cli, parseOffsiteKind(values.from), values.json ?? false);
    return;
  }
  const { backupList } = await import('../http/routes/backups');
  const list = await cli.withAgent((agent) => backupList(agent));
  if (values.json) {
    cli.out(JSON.stringify(list, null, 2));
    return;
  }
  if (list.length === 0) {
    cli.out('no backups');
    return;
  }
  if (!process.stdout.isTTY) {
    for (const b of list) cli.out(row(b, { filename: 0, createdAt: 0, size: SIZE_WIDTH }));
    return;
  }
  const widths: Widths = {
    filename: Math.max(HEADER.filename.length, ...list.map((b) => b.filename.length)),
    createdAt: Math.max(HEADER.createdAt.length, ...list.map((b) => b.createdAt.length)),
    size: Math.max(SIZE_WIDTH, ...list.map((b) => formatSize(b.size).length)),
  };
  cli.out(
    `${HEADER.filename.padEnd(widths.filename)}  ${HEADER.createdAt.padEnd(widths.createdAt)}  ${HEADER.size.padStart(widths.size)}  ${HEADER.kind}`,
  );
  for (const b of list) cli.out(row(b, widths));
}

/**
 * `list --from KIND`: the copies on an enabled destination, newest first, as the page's Offsite list
 * shows them (`--json`: the array GET /api/v1/offsite/KIND/backups answers in `backups`). Each row says
 * whether the copy is here too, and marks a copy of another installation than the active keys' (on a
 * rebuilt controller, its own copies made before the keys import).
 */
async function listRemote(cli: CliContext, kind: OffsiteKind, json: boolean): Promise<void> {
  const { offsiteServiceFor } = await import('../offsite/index');
  const list: RemoteBackup[] = await cli.withAgent((agent) => offsiteServiceFor(agent).listRemote(kind));
  if (json) {
    cli.out(JSON.stringify(list, null, 2));
    return;
  }
  if (list.length === 0) {
    cli.out(`no backups on the ${DESTINATION_TITLES[kind]}`);
    return;
  }
  const width = Math.max(...list.map((b) => b.filename.length));
  for (const b of list) {
    cli.out(
      `${b.filename.padEnd(width)}  ${formatSize(b.size).padStart(SIZE_WIDTH)}  ${b.local ? 'here too' : 'only there'}${otherInstallation(b)}`,
    );
  }
}
