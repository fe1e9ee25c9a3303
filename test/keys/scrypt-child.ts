// Run by test/keys/scrypt-memory.test.ts: `count` checks of one keys file at once whose passphrase is
// wrong and whose scrypt asks for the most GEM accepts (N=2^17, r=8: 128 MiB each), then the peak RSS.
import { buildKeysExport, createKeyringFile, parseKeysExport } from '../../agent/keys/keyring';

const count = Number(process.argv[2]);
const text = await buildKeysExport(createKeyringFile(), 'the right passphrase');
const file = JSON.parse(text) as { protected: { N: number } };
file.protected.N = 1 << 17;
const crafted = JSON.stringify(file);
const outcomes = await Promise.all(
  Array.from({ length: count }, () =>
    parseKeysExport(crafted, 'a wrong passphrase').then(
      () => 'opened',
      (error: { code?: string }) => error.code ?? 'error',
    ),
  ),
);
process.stdout.write(`${JSON.stringify({ outcomes, maxRssMiB: process.resourceUsage().maxRSS / 1024 })}\n`);
