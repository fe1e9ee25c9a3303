/** The environment is checked at start with one clear line per bad variable: tokens, GEM_RESTART_COMMAND. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../agent/config';
import { runProcess } from '../../agent/system/spawn';

function configError(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`accepted: ${JSON.stringify(env)}`);
}

describe('the environment', () => {
  it('refuses an admin or metrics token with white space, which no Authorization header could carry', () => {
    for (const name of ['GEM_AGENT_TOKEN', 'GEM_METRICS_TOKEN']) {
      for (const value of ['correct horse battery staple', 'a-long-enough-token\t', ' a-long-enough-token']) {
        const message = configError({ [name]: value });
        expect(message).toBe(
          `invalid environment: ${name}: ${name} must not contain spaces or other white space`,
        );
        expect(message).not.toContain(value.trim());
      }
    }
    expect(loadConfig({ GEM_AGENT_TOKEN: 'a-long-enough-token-0123' }).agentToken).toBe(
      'a-long-enough-token-0123',
    );
  });

  it('says in one line what is wrong with GEM_RESTART_COMMAND', () => {
    for (const value of ['["systemctl", ', '[]', '[1, 2]', '["systemctl", ""]', '   ']) {
      const message = configError({ GEM_RESTART_COMMAND: value });
      expect(message, value).toMatch(/^invalid environment: GEM_RESTART_COMMAND: /);
      expect(message, value).not.toContain('\n');
      expect(message, value).toMatch(/JSON array of words.*or words separated by spaces/);
    }
    expect(configError({ GEM_RESTART_COMMAND: '["systemctl", ' })).toContain('not valid JSON');
    expect(loadConfig({ GEM_RESTART_COMMAND: '["systemctl","restart","gem"]' }).restartCommand).toEqual([
      'systemctl',
      'restart',
      'gem',
    ]);
    expect(loadConfig({ GEM_RESTART_COMMAND: ' systemctl  restart gem ' }).restartCommand).toEqual([
      'systemctl',
      'restart',
      'gem',
    ]);
  });

  it('says what PORT must be, not zod\'s "expected number, received NaN"', () => {
    for (const value of ['abc', '70000', '80.5', '-1']) {
      expect(configError({ PORT: value }), value).toBe(
        'invalid environment: PORT: must be a port number from 0 to 65535, e.g. PORT=8080 (unset: 8080)',
      );
    }
    expect(loadConfig({ PORT: '9090' }).port).toBe(9090);
    expect(loadConfig({}).port).toBe(8080);
  });

  it('refuses backed-up folders that overlap each other or the data dir, naming both', () => {
    const data = '/srv/gem-data';
    const cases: [Record<string, string>, RegExp][] = [
      [
        { GEM_SCRIPTS_DIR: '/srv/gem', GEM_CONFIG_DIR: '/srv/gem' },
        /GEM_SCRIPTS_DIR, GEM_CONFIG_DIR: \/srv\/gem and \/srv\/gem must be two separate folders/,
      ],
      [
        { GEM_SCRIPTS_DIR: '/srv/gem', GEM_CONFIG_DIR: '/srv/gem/config' },
        /two separate folders, neither inside the other/,
      ],
      [{ GEM_SCRIPTS_DIR: '/srv/gem/scripts/', GEM_CONFIG_DIR: '/srv/gem/' }, /two separate folders/],
      [
        { GEM_SCRIPTS_DIR: '/srv', GEM_CONFIG_DIR: '/etc/gem' },
        /^invalid environment: GEM_SCRIPTS_DIR: \/srv must not be or contain the data dir \/srv\/gem-data: backups would carry the agent's keys/,
      ],
      [
        { GEM_SCRIPTS_DIR: '/opt/scripts', GEM_CONFIG_DIR: '/' },
        /GEM_CONFIG_DIR: \/ must not be or contain the data dir/,
      ],
      [
        { GEM_SCRIPTS_DIR: data, GEM_CONFIG_DIR: '/etc/gem' },
        /GEM_SCRIPTS_DIR: \/srv\/gem-data must not be or contain/,
      ],
      [
        { GEM_SCRIPTS_DIR: `${data}/backups/scripts`, GEM_CONFIG_DIR: '/etc/gem' },
        /GEM_SCRIPTS_DIR: \/srv\/gem-data\/backups\/scripts must not be inside \/srv\/gem-data\/backups, which the agent manages itself/,
      ],
      [
        { GEM_CONFIG_DIR: `${data}/postgres` },
        /GEM_CONFIG_DIR: \/srv\/gem-data\/postgres must not be inside/,
      ],
      // Unset, the scripts are the sample folder in the data dir: a config folder holding it is refused too.
      [
        { GEM_CONFIG_DIR: `${data}/gem` },
        /GEM_SCRIPTS_DIR, GEM_CONFIG_DIR: \/srv\/gem-data\/gem\/scripts and \/srv\/gem-data\/gem/,
      ],
    ];
    for (const [folders, message] of cases) {
      expect(configError({ GEM_DATA_DIR: data, ...folders }), JSON.stringify(folders)).toMatch(message);
    }
    // Two problems: one line each.
    expect(
      configError({ GEM_DATA_DIR: data, GEM_SCRIPTS_DIR: '/', GEM_CONFIG_DIR: '/' }).split('\n'),
    ).toHaveLength(4);
    // Apart (a name that only begins like the other is apart too), inside the data dir's sample place, or unset.
    for (const folders of [
      { GEM_SCRIPTS_DIR: '/srv/gem/scripts', GEM_CONFIG_DIR: '/srv/gem/scripts-config' },
      { GEM_SCRIPTS_DIR: '/srv/gem-data-scripts', GEM_CONFIG_DIR: '/etc/gem' },
      { GEM_SCRIPTS_DIR: `${data}/gem/scripts`, GEM_CONFIG_DIR: `${data}/gem/config` },
      { GEM_SCRIPTS_DIR: `${data}/my-scripts` },
      {},
    ]) {
      expect(() => loadConfig({ GEM_DATA_DIR: data, ...folders }), JSON.stringify(folders)).not.toThrow();
    }
  });

  it('the CLI prints such a mistake as its one line on stderr', async () => {
    const res = await runProcess(process.execPath, ['bin/gem-backup.js', 'list'], {
      env: { ...process.env, GEM_RESTART_COMMAND: '["systemctl", ' },
      cwd: process.cwd(),
    });
    expect(res.code).toBe(1);
    const lines = res.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^gem-backup: invalid environment: GEM_RESTART_COMMAND: not valid JSON/);
  });
});
