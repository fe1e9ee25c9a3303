// Keys checks and imports sent together derive their passphrase keys one at a time: four at once hold
// the memory of one (up to 128 MiB), not four (half a GiB on a small controller).
import { describe, expect, it } from 'vitest';
import { runProcess } from '../../agent/system/spawn';

async function peakOf(count: number): Promise<{ outcomes: string[]; maxRssMiB: number }> {
  const run = await runProcess(
    process.execPath,
    ['--import', 'tsx', 'test/keys/scrypt-child.ts', String(count)],
    {
      cwd: process.cwd(),
    },
  );
  expect(run.code, run.stderr).toBe(0);
  return JSON.parse(run.stdout);
}

describe('passphrase key derivation', () => {
  it('runs one at a time: four checks of a costly keys file at once peak like one', async () => {
    const one = await peakOf(1);
    const four = await peakOf(4);
    expect(one.outcomes).toEqual(['wrong_passphrase']);
    expect(four.outcomes).toEqual(Array(4).fill('wrong_passphrase'));
    // One derivation holds 128 MiB; four at once would add 384 MiB more.
    expect(one.maxRssMiB).toBeGreaterThan(128);
    expect(four.maxRssMiB - one.maxRssMiB).toBeLessThan(128);
  });
});
