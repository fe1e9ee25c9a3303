// `npm run build`: bundles the agent and its CLI into dist/ so they run on plain node, without tsx.
// Measured: the agent opened idle (bench/agent-child.ts) peaks at 69 MB compiled against 117-120 MB under tsx.
import { readFile, rm } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * `node scripts/build.mjs` builds dist/agent/{main,cli}.js; `--out DIR name=entry.ts ...` builds
 * other entry points the same way (the benchmark's agent child, so it measures what `npm start` runs).
 */
function parseArgs(argv) {
  const at = argv.indexOf('--out');
  if (at < 0)
    return { out: join(ROOT, 'dist', 'agent'), entries: { main: 'agent/main.ts', cli: 'agent/cli.ts' } };
  const entries = Object.fromEntries(argv.filter((a) => a.includes('=')).map((a) => a.split('=', 2)));
  return { out: resolve(ROOT, argv[at + 1]), entries };
}
const { out: OUT, entries } = parseArgs(process.argv.slice(2));

/**
 * Modules find files next to them (drizzle/ migrations, agent/ui/, package.json) through
 * `import.meta.url`. Bundled, that would be dist/agent/*.js for all of them: each module's
 * `import.meta.url` is rewritten to its own source file's URL, computed from the bundle's place at
 * run time, so the package folder can still be moved as a whole.
 */
const sourceUrls = {
  name: 'source-import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      if (!text.includes('import.meta.url')) return undefined;
      const fromBundle = relative(OUT, args.path).split('\\').join('/');
      return {
        contents: text.replaceAll(
          'import.meta.url',
          `new URL(${JSON.stringify(fromBundle)}, import.meta.url).href`,
        ),
        loader: 'ts',
      };
    });
  },
};

// A clean folder: chunk names carry hashes, and old ones would pile up.
await rm(OUT, { recursive: true, force: true });
await build({
  absWorkingDir: ROOT,
  entryPoints: entries,
  outdir: OUT,
  bundle: true,
  splitting: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  packages: 'external',
  sourcemap: true,
  // Chunks beside the entry points: every output file sits in OUT, which the URLs above assume.
  chunkNames: '[name]-[hash]',
  logLevel: 'warning',
  plugins: [sourceUrls],
});
process.stdout.write(`built ${relative(ROOT, OUT)} (${pathToFileURL(OUT).href})\n`);
