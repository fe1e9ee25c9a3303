// Offsite tests that change the settings while an upload runs: an agent whose SFTP provider runs a
// hook inside its next upload, the SFTP section and folders around it, and the set-ups they share.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor, uploadBackup } from '../../agent/offsite/index';
import { fileSource } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import type { StorageProvider } from '../../shared/storage/index';
import { startTestAgent, type TestAgent } from '../services/agent';
import type { TestPostgres } from '../services/postgres';
import type { SshdService } from '../services/sshd';
import { backupNow, FAST, filenameOf } from './helpers';

type SftpExtra = { enabled?: boolean; autoUpload?: boolean };

export class MidUploadFixture {
  /** Runs once inside the next SFTP upload, after its bytes are written and before the file takes its name. */
  duringSftpUpload: (() => Promise<void>) | undefined;

  private constructor(
    readonly t: TestAgent,
    readonly sshd: SshdService,
  ) {}

  /**
   * A test agent with the offsite and settings routes whose SFTP uploads run `duringSftpUpload`.
   * `stallTimeoutMs` (default FAST's) must outlast a hook that holds the upload, e.g. over a page reload.
   */
  static async start(
    pg: TestPostgres,
    sshd: SshdService,
    options: { stallTimeoutMs?: number } = {},
  ): Promise<MidUploadFixture> {
    const t = await startTestAgent(pg, { modules: [offsiteModule, settingsModule] });
    const fixture = new MidUploadFixture(t, sshd);
    offsiteServiceFor(t.agent, {
      ...FAST,
      ...options,
      providerOverrides: {
        ...FAST.providerOverrides,
        // The plain-rename path has the provider's own test hook between upload and rename.
        sftp: {
          ...FAST.providerOverrides?.sftp,
          posixRename: false,
          faults: {
            beforeReplace: async () => {
              const hook = fixture.duringSftpUpload;
              fixture.duringSftpUpload = undefined; // once
              await hook?.();
            },
          },
        },
      },
    });
    return fixture;
  }

  /** The SFTP section of the settings for `remotePath` on the test sshd (password sign-in). */
  sftp(remotePath: string, extra: SftpExtra = {}) {
    return {
      enabled: true,
      host: this.sshd.host,
      port: this.sshd.port,
      username: this.sshd.passwordUser.username,
      remotePath,
      auth: { password: this.sshd.passwordUser.password },
      autoUpload: false,
      ...extra,
    };
  }

  sftpProvider(folder: string): SftpProvider {
    return new SftpProvider({ ...this.sftp(folder), password: this.sshd.passwordUser.password });
  }

  /** The names in `folder` on the SFTP server, read from its disk. */
  async remoteNames(folder: string): Promise<string[]> {
    return (await readdir(join(this.sshd.root, folder)).catch(() => [] as string[])).sort();
  }

  async localNames(): Promise<string[]> {
    return (await this.t.agent.catalog.list()).map((b) => b.filename).sort();
  }

  /** The four backups the last fourBackups made: the next one uses them again while they are the only ones here. */
  private four: string[] | undefined;

  /**
   * Four backups b1..b4, b1 and b2 also at `folder` on the SFTP server (placed there directly). Under
   * maxBackups 2 a sync uploads b3 then b4 and deletes b1 and b2 on both sides. The four of the call
   * before are taken again when they are all that is here, none pinned (an earlier test kept them):
   * a new folder makes them new to the server, and making four more would only cost time.
   */
  async fourBackups(folder: string): Promise<[string, string, string, string]> {
    const { agent } = this.t;
    await agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: this.sftp(folder, { enabled: false }) },
    });
    const here = await agent.catalog.list();
    const again =
      this.four !== undefined &&
      here.every((b) => !b.pinned) &&
      JSON.stringify(here.map((b) => b.filename).sort()) === JSON.stringify([...this.four].sort());
    let made: string[];
    if (again) made = this.four!;
    else {
      for (const { filename } of here) await agent.catalog.delete(filename);
      made = [];
      for (let i = 0; i < 4; i++) made.push(filenameOf(await backupNow(this.t)));
      this.four = made;
    }
    const provider = this.sftpProvider(folder);
    for (const name of made.slice(0, 2)) await uploadBackup(agent, provider, name);
    await agent.settings.update({ autoBackup: { maxBackups: 2 }, offsite: { sftp: this.sftp(folder) } });
    return made as [string, string, string, string];
  }

  /**
   * Copies of ours from one and two days ago at each of `destinations`, none here (the local backup
   * they were copied from is deleted): retention prunes them after the next upload. Their names.
   */
  async olderCopiesAt(destinations: StorageProvider[]): Promise<string[]> {
    const { catalog } = this.t.agent;
    for (const name of await this.localNames()) await catalog.delete(name);
    const made = filenameOf(await backupNow(this.t));
    const path = catalog.pathOf(made);
    const sha256 = await catalog.knownSha256(made);
    expect(sha256).toBeDefined();
    const source = fileSource(path, (await stat(path)).size, sha256 as string);
    const day = 24 * 3600 * 1000;
    const older = [backupNameFor(new Date(Date.now() - 2 * day)), backupNameFor(new Date(Date.now() - day))];
    for (const name of older) for (const destination of destinations) await destination.put(name, source);
    await catalog.delete(made);
    return older;
  }

  /** A backup through the API whose follow-ups succeed; its name and the `offsite-upload` notices of its job. */
  async backupWithUploads(): Promise<{ name: string; notices: unknown[] }> {
    const notices: unknown[] = [];
    const off = this.t.agent.jobs.subscribeAll((event) => {
      if (event.type === 'notice' && event.name === 'offsite-upload') notices.push(event.data);
    });
    try {
      const job = await backupNow(this.t);
      // The job's result keeps the auto-upload's outcomes, the same its notice told.
      expect((job.result as { followUps: Record<string, unknown> }).followUps['offsiteUpload']).toEqual({
        ok: true,
        details: notices.at(-1),
      });
      return { name: filenameOf(job), notices };
    } finally {
      off();
    }
  }
}
