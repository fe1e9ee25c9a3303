/** Fault counts of one suite file: what was injected, what was tried, what failed; printed at the end of the file. */
import { appendFileSync } from 'node:fs';

interface FaultReport {
  /** Counts one injected fault (a kill, a flipped bit, a hostile request...). */
  inject(n?: number): void;
  /** Counts one checked case; `ok` false is a failure (also asserted by the test itself). */
  tried(ok: boolean, what?: string): void;
  readonly failures: string[];
  /** The summary line: `faults[area]: N <what> injected, M cases tried, F failures`. */
  line(): string;
  print(): void;
}

/** A report for `area`; `unit` names what is injected ("kills", "corruptions", "hostile requests"). */
export function faultReport(area: string, unit: string): FaultReport {
  let injected = 0;
  let cases = 0;
  const failures: string[] = [];
  const report: FaultReport = {
    inject: (n = 1) => {
      injected += n;
    },
    tried: (ok, what) => {
      cases += 1;
      if (!ok) failures.push(what ?? `case ${cases}`);
    },
    failures,
    line: () =>
      `faults[${area}]: ${injected} ${unit} injected, ${cases} cases tried, ${cases - failures.length} held, ` +
      `${failures.length} failures${failures.length ? ` (${failures.slice(0, 5).join('; ')})` : ''}`,
    print: () => {
      const text = report.line();
      console.log(text);
      // The soak script collects every file's line in one place.
      if (process.env.GEM_FAULTS_REPORT) appendFileSync(process.env.GEM_FAULTS_REPORT, `${text}\n`);
    },
  };
  return report;
}
