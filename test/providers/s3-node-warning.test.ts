/**
 * The AWS SDK warns on Node < 22, once per process, that its releases after January 2027 will need
 * Node 22: eight lines on stderr of every CLI command that sets up the S3 destination, which an owner
 * cannot act on (a drill found them on every command). The S3 provider turns that warning off.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('the S3 provider on Node 20', () => {
  it('writes nothing to stderr when it makes its client', () => {
    const code = `
      const { S3Provider } = await import('./agent/providers/s3.ts');
      new S3Provider({ endpoint: 'http://127.0.0.1:9', region: 'us-east-1', bucket: 'b', accessKeyId: 'a', secretAccessKey: 's', forcePathStyle: true });
      process.stdout.write('made');
    `;
    const { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: _inherited, ...env } = process.env;
    const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      env,
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.stdout, run.stderr).toBe('made');
    expect(run.stderr).not.toContain('NodeVersionSupportWarning');
    expect(run.stderr.trim()).toBe('');
  });
});
