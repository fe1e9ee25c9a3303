/** Hostile input to the DR cloud, generated from a seeded PRNG: every claim, header, encoding, HTTP, multipart, enrollment and recovery trick refused (4xx, the API error shape), the slot unchanged. */
import { sign as cryptoSign, generateKeyPairSync, randomBytes } from 'node:crypto';
import net from 'node:net';
import { base64url, CompactSign, exportJWK, FlattenedSign, generateKeyPair, importJWK, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError, BACKUP_CREATED_AT_HEADER, SLOT_HEADERS } from '../../shared/api/cloud';
import { generateFileKey, newCore, sealStream, wrapForX25519 } from '../../shared/envelope';
import { REQUEST_TOKEN_TYPE } from '../../shared/signing';
import {
  type CloudUnderTest,
  ENROLLMENT_TOKEN,
  enroll,
  newInstallation,
  sha256,
  startCloud,
  type TestInstallation,
} from '../cloud/harness';
import { x25519Pair } from '../services/dr-cloud';
import { mulberry32 } from './random';
import { faultReport } from './report';

const SEED = Number(process.env.GEM_FAULTS_SEED ?? 0xc10d);
const rand = mulberry32(SEED);
const report = faultReport('cloud-hostile', 'hostile requests');
const MAX_SLOT_BYTES = 200_000_000;
const MiB = 1024 * 1024;
const DAY = 86_400_000;

let cloud: CloudUnderTest;
let port = 0;
/** The installation under attack; `other` is a second enrolled one; `probe` proves each baseline is accepted. */
let inst: TestInstallation;
let other: TestInstallation;
let probe: TestInstallation;
const slotCreatedAt = new Date(Date.now() - 2 * DAY).toISOString();
/** Newer than the slot, not in the future: an unmutated upload with it replaces the slot. */
const newerCreatedAt = new Date(Date.now() - DAY).toISOString();
/** A request id the cloud has already seen from `inst`. */
let seenJti = '';

// ---------------------------------------------------------------- PRNG helpers

const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = <T>(items: readonly T[]): T => items[int(0, items.length - 1)]!;
const hex = (n: number) => Array.from({ length: n }, () => '0123456789abcdef'[int(0, 15)]).join('');
const b64u = (n: number) =>
  Array.from(
    { length: n },
    () => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[int(0, 63)],
  ).join('');
const junk = (n: number) => Array.from({ length: n }, () => String.fromCharCode(int(33, 126))).join('');
const nowSeconds = () => Math.floor(Date.now() / 1000);
const newJti = () => randomBytes(16).toString('hex');

// ---------------------------------------------------------------- raw HTTP

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}
type Outcome = Answer | { closed: string };

interface RawRequest {
  method: string;
  target: string;
  headers?: [string, string][];
  body?: Buffer;
  /** send the body chunked, without Content-Length */
  chunked?: boolean;
  /** half-close after sending: the server sees the end of a body shorter than announced */
  halfClose?: boolean;
}

/** One request written byte for byte on a fresh socket, so that headers and lengths can lie. */
function raw(req: RawRequest): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (why?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const parsed = parseAnswer(Buffer.concat(chunks), req.method === 'HEAD');
      resolve(parsed ?? { closed: why ?? 'closed without an answer' });
    };
    const timer = setTimeout(() => finish('no answer within 5 s'), 5_000);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      // Done as soon as the answer is whole: a server may keep the socket open a while after it.
      if (isComplete(Buffer.concat(chunks), req.method === 'HEAD')) finish();
    });
    socket.on('end', () => finish());
    socket.on('close', () => finish());
    socket.on('error', (e) => finish(e.message));
    const lines = [`${req.method} ${req.target} HTTP/1.1`, `host: 127.0.0.1:${port}`, 'connection: close'];
    for (const [k, v] of req.headers ?? []) lines.push(`${k}: ${v}`);
    let body = req.body ?? Buffer.alloc(0);
    if (req.chunked) {
      lines.push('transfer-encoding: chunked');
      body = Buffer.concat([
        Buffer.from(`${body.length.toString(16)}\r\n`),
        body,
        Buffer.from('\r\n0\r\n\r\n'),
      ]);
    }
    socket.write(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), body]));
    if (req.halfClose) socket.end();
  });
}

function isComplete(bytes: Buffer, head: boolean): boolean {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const headText = bytes.subarray(0, end).toString('latin1').toLowerCase();
  if (head || /^http\/1\.[01] (1\d\d|204|304)/.test(headText)) return true;
  const length = /\r\ncontent-length:\s*(\d+)/.exec(headText);
  if (length) return bytes.length - (end + 4) >= Number(length[1]);
  if (/\r\ntransfer-encoding:[^\r]*chunked/.test(headText))
    return bytes.subarray(end + 4).includes('0\r\n\r\n');
  return false;
}

function parseAnswer(bytes: Buffer, head: boolean): Answer | null {
  const end = bytes.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...headerLines] = bytes.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1] ?? Number.NaN);
  if (!Number.isFinite(status)) return null;
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = head ? Buffer.alloc(0) : bytes.subarray(end + 4);
  if (!head && headers['transfer-encoding']?.includes('chunked')) {
    const out: Buffer[] = [];
    let at = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', at);
      if (eol < 0) break;
      const n = Number.parseInt(body.subarray(at, eol).toString(), 16);
      if (!n) break;
      out.push(body.subarray(eol + 2, eol + 2 + n));
      at = eol + 2 + n + 2;
    }
    body = Buffer.concat(out);
  } else if (!head && headers['content-length'] !== undefined) {
    body = body.subarray(0, Number(headers['content-length']));
  }
  return { status, headers, body };
}

// ---------------------------------------------------------------- signing with any header and claims

type Claims = Record<string, unknown>;

function validClaims(
  who: TestInstallation,
  method: string,
  path: string,
  body: Buffer,
  bca?: string,
): Claims {
  const claims: Claims = {
    iss: who.installationId,
    mth: method,
    pth: path,
    bsh: sha256(body),
    bln: body.length,
    iat: nowSeconds(),
    jti: newJti(),
  };
  if (bca !== undefined) claims.bca = bca;
  return claims;
}

/** Signs `payload` (claims, or raw payload text) with `key` (default: the installation's Ed25519 key). */
async function sign(
  who: TestInstallation,
  payload: Claims | string,
  header: Record<string, unknown> = { alg: 'EdDSA', typ: REQUEST_TOKEN_TYPE },
  key?: { alg: string; key: CryptoKey | Uint8Array },
): Promise<string> {
  const bytes = new TextEncoder().encode(typeof payload === 'string' ? payload : JSON.stringify(payload));
  const k = key ?? {
    alg: 'EdDSA',
    key: (await importJWK({ ...who.privateJwk, alg: 'EdDSA' }, 'EdDSA')) as CryptoKey,
  };
  return new CompactSign(bytes).setProtectedHeader(header as { alg: string }).sign(k.key);
}

/** A compact JWS with any header bytes and no valid signature. */
function unsigned(header: unknown, claims: Claims, signature = ''): string {
  return `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(claims))}.${signature}`;
}

// ---------------------------------------------------------------- the slot before and after

interface Snapshot {
  inst: { status: number; meta: Record<string, string | undefined> };
  objects: string[];
}

async function signedRequest(
  who: TestInstallation,
  method: string,
  path: string,
  body = Buffer.alloc(0),
  jti = newJti(),
): Promise<Outcome> {
  const token = await sign(who, { ...validClaims(who, method, path, body), jti });
  const headers: [string, string][] = [['authorization', `GEM-Signature ${token}`]];
  if (body.length || method === 'PUT' || method === 'POST')
    headers.push(['content-length', String(body.length)]);
  if (body.length) headers.push(['content-type', 'application/json']);
  return raw({ method, target: path, headers, body });
}

async function slotOf(who: TestInstallation) {
  const jti = newJti();
  const head = await signedRequest(who, 'HEAD', '/v1/dr/backup', Buffer.alloc(0), jti);
  if ('closed' in head) throw new Error(`HEAD failed: ${head.closed}`);
  if (who === inst && head.status === 200) seenJti = jti;
  const meta = Object.fromEntries(Object.values(SLOT_HEADERS).map((h) => [h, head.headers[h.toLowerCase()]]));
  return { status: head.status, meta };
}

/** The attacked slot as its owner sees it (HEAD) and as storage holds it (R2 listing). */
async function snapshot(): Promise<Snapshot> {
  const [a, objects] = await Promise.all([slotOf(inst), cloud.listSlotObjects(inst.installationId)]);
  return { inst: a, objects };
}

/** The other installation's slot, checked once per family (its requests never name it). */
async function otherSnapshot(): Promise<string> {
  const [b, objects] = await Promise.all([slotOf(other), cloud.listSlotObjects(other.installationId)]);
  return JSON.stringify({ b, objects });
}

// ---------------------------------------------------------------- running cases

interface Case {
  what: string;
  send: () => Promise<Outcome>;
  /** the runtime may answer before the app (no API error shape) or drop the connection */
  runtime?: boolean;
  /** statuses this case must answer with (default: any 4xx) */
  status?: number[];
}

/** Sends every case; each must be refused and leave both slots as `before`. Returns the failures. */
async function runCases(area: string, cases: Case[]): Promise<string[]> {
  const failures: string[] = [];
  let before = await snapshot();
  const otherBefore = await otherSnapshot();
  for (const c of cases) {
    report.inject();
    const answer = await c.send();
    const problem = refusalProblem(answer, c);
    const after = await snapshot();
    const changed = JSON.stringify(after) !== JSON.stringify(before);
    const what = `${area}: ${c.what}`;
    if (problem) failures.push(`${what}: ${problem}`);
    if (changed)
      failures.push(`${what}: the slot changed ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
    report.tried(!problem && !changed, what);
    if (problem || changed) console.log(`FAILED ${what}: ${problem ?? 'the slot changed'}`);
    before = after;
  }
  if ((await otherSnapshot()) !== otherBefore)
    failures.push(`${area}: the other installation's slot changed`);
  return failures;
}

/** Requests the runtime (workerd's HTTP parser) refused before the Worker ran: counted and reported apart. */
const runtimeRefusals: string[] = [];

function refusalProblem(answer: Outcome, c: Case): string | null {
  if ('closed' in answer) {
    if (!c.runtime) return `no answer (${answer.closed})`;
    runtimeRefusals.push(`${c.what}: connection closed`);
    return null;
  }
  const { status } = answer;
  // workerd answers a request it cannot parse (bad Content-Length, absolute-form target) with a bare 500
  // and never runs the Worker; Cloudflare's edge answers those itself in production.
  if (c.runtime && status >= 500 && !answer.headers['content-type']?.includes('json')) {
    runtimeRefusals.push(`${c.what}: runtime ${status}`);
    return null;
  }
  if (c.status ? !c.status.includes(status) : status < 400 || status > 499) {
    return `answered ${status} ${answer.body.toString('utf8').slice(0, 200)}`;
  }
  if (c.runtime && status >= 400 && status <= 499) {
    // The runtime's own answers (a malformed request line, oversize headers) carry no API body.
    if (!answer.headers['content-type']?.includes('json')) return null;
  }
  if (answer.body.length === 0 && c.send.name === 'head') return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.body.toString('utf8'));
  } catch {
    return `${status} without a JSON body: ${answer.body.toString('utf8').slice(0, 120)}`;
  }
  if (!ApiError.safeParse(parsed).success)
    return `${status} not in the API error shape: ${JSON.stringify(parsed)}`;
  return null;
}

/** A PUT /v1/dr/backup of `body` with the token `token` and honest Content-Length and created-at headers. */
function putWith(
  token: string,
  body: Buffer,
  bca?: unknown,
  extra: [string, string][] = [],
): Promise<Outcome> {
  const headers: [string, string][] = [
    ['authorization', `GEM-Signature ${token}`],
    ['content-length', String(body.length)],
    ...extra,
  ];
  if (typeof bca === 'string') headers.push([BACKUP_CREATED_AT_HEADER, bca]);
  return raw({ method: 'PUT', target: '/v1/dr/backup', headers, body });
}

async function controlPut(): Promise<void> {
  const body = randomBytes(int(100, 4000));
  const createdAt = new Date(Date.now() - int(1, 1000) * 1000).toISOString();
  const token = await sign(probe, validClaims(probe, 'PUT', '/v1/dr/backup', body, createdAt));
  const answer = await putWith(token, body, createdAt);
  expect('status' in answer && answer.status, 'the unmutated baseline is accepted').toBe(201);
}

// ---------------------------------------------------------------- setup

async function sealedBackup(installationId: string, createdAt: string, escrow: JWK): Promise<Buffer> {
  const fileKey = generateFileKey();
  const stanzas = [
    await wrapForX25519(fileKey, escrow, 'escrow'),
    await wrapForX25519(new TextEncoder().encode('{"keyring":"test"}'), escrow, 'escrow-keyring'),
  ];
  const core = newCore({ installationId, createdAt, meta: { kind: 'dr' }, chunkSize: 16384 });
  const sealed = sealStream(new Blob([randomBytes(50_000)]).stream() as ReadableStream<Uint8Array>, {
    core,
    stanzas,
    fileKey,
  });
  const chunks: Uint8Array[] = [];
  for await (const c of sealed as unknown as AsyncIterable<Uint8Array>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function putSlot(who: TestInstallation, body: Buffer, createdAt: string): Promise<number> {
  const token = await sign(who, validClaims(who, 'PUT', '/v1/dr/backup', body, createdAt));
  const answer = await putWith(token, body, createdAt);
  return 'status' in answer ? answer.status : 0;
}

beforeAll(async () => {
  const escrow = await x25519Pair('escrow-hostile');
  cloud = await startCloud({
    ESCROW_PRIVATE_KEYS: JSON.stringify([escrow.privateJwk]),
    RECOVER_PER_MINUTE: '100000',
    MAX_SLOT_BYTES: String(MAX_SLOT_BYTES),
  });
  port = Number(new URL(cloud.url).port);
  [inst, other, probe] = await Promise.all([newInstallation(), newInstallation(), newInstallation()]);
  for (const who of [inst, other, probe]) expect((await enroll(cloud, who)).status).toBe(201);
  const sealed = await sealedBackup(inst.installationId, slotCreatedAt, escrow.publicJwk);
  expect(await putSlot(inst, sealed, slotCreatedAt)).toBe(201);
  expect(await putSlot(other, randomBytes(3000), slotCreatedAt)).toBe(201);
}, 120_000);

afterAll(async () => {
  report.print();
  console.log(
    `faults[cloud-hostile]: ${runtimeRefusals.length} requests refused by the runtime before the Worker ran` +
      (runtimeRefusals.length ? ` (${runtimeRefusals.join('; ')})` : ''),
  );
  await cloud?.dispose();
});

// ---------------------------------------------------------------- the cases

/** Each claim of a valid signed upload replaced by PRNG-chosen wrong values, signed with the right key. */
async function claimCases(): Promise<Case[]> {
  const body = randomBytes(int(500, 5000));
  const base = () => validClaims(inst, 'PUT', '/v1/dr/backup', body, newerCreatedAt);
  const gone = Symbol('missing');
  const variants: Record<string, unknown[]> = {
    iss: [
      other.installationId,
      probe.installationId,
      hex(32),
      hex(32),
      inst.installationId.toUpperCase(),
      inst.installationId.slice(1),
      `${inst.installationId}0`,
      `${inst.installationId.slice(0, 31)}g`,
      ` ${inst.installationId}`,
      `../${inst.installationId.slice(3)}`,
      Number.parseInt(inst.installationId.slice(0, 8), 16),
      [inst.installationId],
      { id: inst.installationId },
      null,
      '',
      gone,
    ],
    mth: [
      'GET',
      'POST',
      'DELETE',
      'HEAD',
      'PATCH',
      'put',
      'Put',
      ' PUT',
      'PUT ',
      'PUT\u0000',
      junk(int(1, 12)),
      '',
      1,
      null,
      gone,
    ],
    pth: [
      '/v1/dr/backup/',
      '/v1/dr/Backup',
      '/V1/dr/backup',
      '/v1/dr/uploads',
      '/v1/dr//backup',
      '//v1/dr/backup',
      'v1/dr/backup',
      '/v1/dr/backup?',
      '/v1/dr/backup?x=1',
      '/v1/dr/%62ackup',
      '/v1/dr/backup%00',
      '/v1/dr/./backup',
      '/v1/dr/x/../backup',
      '/v1/dr/../installations',
      `/${junk(int(1, 30))}`,
      '',
      null,
      gone,
    ],
    bsh: [
      hex(64),
      hex(64),
      sha256(Buffer.alloc(0)),
      sha256(body).toUpperCase(),
      sha256(body).slice(1),
      `${sha256(body)}0`,
      sha256(body).replace(/^./, (c) => (c === '0' ? '1' : '0')),
      b64u(43),
      12345,
      null,
      gone,
    ],
    bln: [
      body.length + 1,
      body.length - 1,
      body.length + int(2, 1_000_000),
      0,
      -1,
      body.length + 0.5,
      2 ** 53,
      MAX_SLOT_BYTES + 1,
      String(body.length),
      null,
      gone,
    ],
    iat: [
      nowSeconds() - 305 - int(0, 1_000_000),
      nowSeconds() - 305 - int(0, 1_000),
      nowSeconds() + 305 + int(0, 1_000_000),
      nowSeconds() + 305 + int(0, 1_000),
      0,
      -1,
      nowSeconds() + 0.5,
      String(nowSeconds()),
      2 ** 53,
      1e308,
      null,
      gone,
    ],
    jti: [
      () => seenJti,
      'short',
      'a'.repeat(15),
      b64u(129),
      'has spaces in it!!',
      'ü'.repeat(20),
      `${b64u(20)}.${b64u(4)}`,
      1234567890123456,
      '',
      null,
      gone,
    ],
    bca: [
      new Date(Date.parse(slotCreatedAt) - int(1, 1000) * 1000).toISOString(),
      '2000-01-01T00:00:00.000Z',
      '0',
      new Date(Date.now() + int(2, 30) * DAY).toISOString(),
      '9999-12-31T23:59:59.999Z',
      '+275760-09-13T00:00:00.000Z',
      'garbage',
      junk(int(5, 30)),
      '2026-13-45T99:99:99Z',
      // Newer than the slot, and a date Date.parse reads, but not the ISO form a backup's created-at takes.
      new Date(Date.now() - int(1, 100) * 1000).toUTCString(),
      new Date(Date.now() - int(1, 100) * 1000).toISOString().replace('Z', '+00:00'),
      '',
      12345,
      null,
      gone,
    ],
  };
  const cases: Case[] = [];
  for (const [claim, values] of Object.entries(variants)) {
    for (const value of values) {
      cases.push({
        what: `claim ${claim} = ${JSON.stringify(typeof value === 'symbol' ? 'missing' : typeof value === 'function' ? 'a seen jti' : value)?.slice(0, 60)}`,
        send: async () => {
          const claims = base();
          if (value === gone) delete claims[claim];
          else claims[claim] = typeof value === 'function' ? (value as () => string)() : value;
          const token = await sign(inst, claims);
          return putWith(token, body, claims.bca);
        },
      });
    }
  }
  // The created-at header says something else than the signed bca.
  for (const header of [slotCreatedAt, new Date(Date.now() - int(1, 100) * 1000).toISOString(), 'garbage']) {
    cases.push({
      what: `${BACKUP_CREATED_AT_HEADER} header ${header} differs from the signed bca`,
      send: async () =>
        putWith(await sign(inst, base()), body, undefined, [[BACKUP_CREATED_AT_HEADER, header]]),
    });
  }
  // Duplicate keys: the first is right, the one JSON.parse keeps is not (and the other way round).
  for (const [claim, wrong] of [
    ['pth', '/v1/dr/uploads'],
    ['iss', other.installationId],
    ['mth', 'GET'],
    ['bln', 1],
  ] as const) {
    cases.push({
      what: `claim ${claim} duplicated in the payload (last one wrong)`,
      send: async () => {
        const claims = base();
        const text = JSON.stringify(claims).replace(
          /}$/,
          `,${JSON.stringify(claim)}:${JSON.stringify(wrong)}}`,
        );
        return putWith(await sign(inst, text), body, claims.bca);
      },
    });
  }
  return cases;
}

/** The protected header: algorithms, keys of other kinds, kid and embedded-key games, typ and crit. */
async function headerCases(): Promise<Case[]> {
  const body = randomBytes(int(500, 3000));
  const claims = () => validClaims(inst, 'PUT', '/v1/dr/backup', body, newerCreatedAt);
  const put = (token: string) => putWith(token, body, newerCreatedAt);
  const typ = REQUEST_TOKEN_TYPE;
  const rsa = (await generateKeyPair('RS256')).privateKey;
  const pss = (await generateKeyPair('PS256')).privateKey;
  const p256 = (await generateKeyPair('ES256')).privateKey;
  const p384 = (await generateKeyPair('ES384')).privateKey;
  // jose has no Ed448: the JWS is put together by hand around a node:crypto signature.
  const ed448 = generateKeyPairSync('ed448').privateKey;
  const signEd448 = (header: Record<string, unknown>, claims: Claims) => {
    const input = `${base64url.encode(JSON.stringify(header))}.${base64url.encode(JSON.stringify(claims))}`;
    return `${input}.${base64url.encode(cryptoSign(null, Buffer.from(input), ed448))}`;
  };
  const attacker = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const attackerPublic = await exportJWK(attacker.publicKey);
  const ownEd = (await importJWK({ ...inst.privateJwk, alg: 'EdDSA' }, 'EdDSA')) as CryptoKey;
  const pub = new TextEncoder().encode(JSON.stringify(inst.publicJwk));
  const cases: Case[] = [];
  const add = (what: string, token: () => Promise<string> | string) =>
    cases.push({ what: `header: ${what}`, send: async () => put(await token()) });

  for (const alg of ['none', 'None', 'NONE', 'nOnE', '']) {
    add(`alg ${JSON.stringify(alg)} unsigned`, () => unsigned({ alg, typ }, claims()));
  }
  add('alg none with a valid EdDSA signature appended', async () => {
    const good = (await sign(inst, claims())).split('.');
    return `${base64url.encode(JSON.stringify({ alg: 'none', typ }))}.${good[1]}.${good[2]}`;
  });
  for (const [alg, secret] of [
    ['HS256', pub],
    ['HS256', base64url.decode(inst.publicJwk.x!)],
    ['HS256', new TextEncoder().encode(inst.publicJwk.x!)],
    ['HS384', pub],
    ['HS512', pub],
  ] as const) {
    add(`${alg} keyed with the public key`, () => sign(inst, claims(), { alg, typ }, { alg, key: secret }));
  }
  add('RS256 with an RSA key', () => sign(inst, claims(), { alg: 'RS256', typ }, { alg: 'RS256', key: rsa }));
  add('PS256 with an RSA key', () => sign(inst, claims(), { alg: 'PS256', typ }, { alg: 'PS256', key: pss }));
  add('ES256 with a P-256 key', () =>
    sign(inst, claims(), { alg: 'ES256', typ }, { alg: 'ES256', key: p256 }),
  );
  add('ES384 with a P-384 key', () =>
    sign(inst, claims(), { alg: 'ES384', typ }, { alg: 'ES384', key: p384 }),
  );
  add('EdDSA with an Ed448 key (wrong crv)', () => signEd448({ alg: 'EdDSA', typ }, claims()));
  add('EdDSA with an Ed448 key, crv Ed448 in the header', () =>
    signEd448({ alg: 'EdDSA', typ, crv: 'Ed448' }, claims()),
  );
  add('alg Ed25519 (the new name) with a valid signature', async () =>
    sign(
      inst,
      claims(),
      { alg: 'Ed25519', typ },
      {
        alg: 'Ed25519',
        key: (await importJWK({ ...inst.privateJwk, alg: 'Ed25519' }, 'Ed25519')) as CryptoKey,
      },
    ),
  );
  for (let i = 0; i < 5; i++) {
    const alg = pick(['eddsa', 'EDDSA', 'EdDSA ', 'ES256K', 'RSA-OAEP', 'dir', junk(int(1, 10))]);
    add(`alg ${JSON.stringify(alg)} unsigned (PRNG)`, () => unsigned({ alg, typ }, claims(), b64u(86)));
  }
  add("an attacker's key embedded as jwk", () =>
    sign(
      inst,
      claims(),
      { alg: 'EdDSA', typ, jwk: attackerPublic },
      { alg: 'EdDSA', key: attacker.privateKey as CryptoKey },
    ),
  );
  add("kid naming another installation, signed with the attacker's key", () =>
    sign(
      inst,
      claims(),
      { alg: 'EdDSA', typ, kid: other.installationId },
      { alg: 'EdDSA', key: attacker.privateKey as CryptoKey },
    ),
  );
  add('kid path traversal, jku and x5u to elsewhere', () =>
    sign(
      inst,
      claims(),
      {
        alg: 'EdDSA',
        typ,
        kid: '../../keys/other',
        jku: 'http://127.0.0.1:1/jwks',
        x5u: 'http://127.0.0.1:1/x',
      },
      { alg: 'EdDSA', key: attacker.privateKey as CryptoKey },
    ),
  );
  add("signed by another installation's key, naming this one", () =>
    sign({ ...other, installationId: inst.installationId }, claims()),
  );
  add('typ missing', () => sign(inst, claims(), { alg: 'EdDSA' }));
  add('typ JWT', () => sign(inst, claims(), { alg: 'EdDSA', typ: 'JWT' }));
  add('typ upper-cased', () => sign(inst, claims(), { alg: 'EdDSA', typ: typ.toUpperCase() }));
  add('crit b64 false (unencoded payload)', async () => {
    const payload = JSON.stringify(claims());
    const jws = await new FlattenedSign(new TextEncoder().encode(payload))
      .setProtectedHeader({ alg: 'EdDSA', typ, b64: false, crit: ['b64'] })
      .sign(ownEd);
    return `${jws.protected}.${base64url.encode(payload)}.${jws.signature}`;
  });
  add('crit naming an unknown extension', () =>
    unsigned({ alg: 'EdDSA', typ, crit: ['gem'], gem: 1 }, claims(), b64u(86)),
  );
  add(
    'header is a JSON array',
    () => `${base64url.encode('["EdDSA"]')}.${base64url.encode(JSON.stringify(claims()))}.${b64u(86)}`,
  );
  add(
    'header is not JSON',
    () => `${base64url.encode('{alg:EdDSA')}.${base64url.encode(JSON.stringify(claims()))}.${b64u(86)}`,
  );
  add('header is empty', () => `.${base64url.encode(JSON.stringify(claims()))}.${b64u(86)}`);
  return cases;
}

/** The token's encoding: truncations, extra segments, foreign characters, flipped bits, huge tokens, scheme games. */
async function encodingCases(): Promise<Case[]> {
  const body = randomBytes(int(500, 3000));
  const good = () => sign(inst, validClaims(inst, 'PUT', '/v1/dr/backup', body, newerCreatedAt));
  const cases: Case[] = [];
  // `needs`: what a token must contain for the change to change it (a fresh jti gives another token).
  const add = (what: string, make: (t: string) => string, runtime = false, needs?: RegExp) =>
    cases.push({
      what: `encoding: ${what}`,
      runtime,
      send: async () => {
        let original = await good();
        for (let i = 0; needs && !needs.test(original); i++) {
          if (i === 100) throw new Error(`no token with ${needs} in 100 tries`);
          original = await good();
        }
        const token = make(original);
        if (token === original) throw new Error(`the change "${what}" left the token as it was`);
        return raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ['authorization', `GEM-Signature ${token}`],
            ['content-length', String(body.length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
        });
      },
    });
  for (let i = 0; i < 12; i++) {
    const cut = rand();
    add(`truncated at ${(cut * 100).toFixed(1)} %`, (t) => t.slice(0, Math.floor(t.length * cut)));
  }
  add('last signature character dropped', (t) => t.slice(0, -1));
  add('one signature character added', (t) => `${t}A`);
  add('a trailing dot', (t) => `${t}.`);
  add('a fourth segment', (t) => `${t}.${b64u(20)}`);
  add('five segments (JWE-like)', (t) => `${t}.${b64u(10)}.${b64u(22)}`);
  add('the payload repeated as a fourth segment', (t) => `${t}.${t.split('.')[1]}`);
  add('two tokens separated by a space', (t) => `${t} ${t}`);
  for (let i = 0; i < 12; i++) {
    const ch = pick(['+', '/', '=', '%', '!', '*', '~', '\t', ',', ';', '\\', '"']);
    const where = rand();
    add(`${JSON.stringify(ch)} inserted at ${(where * 100).toFixed(1)} %`, (t) => {
      const at = Math.floor(t.length * where);
      return `${t.slice(0, at)}${ch}${t.slice(at)}`;
    });
  }
  add('standard base64 padding on every segment', (t) =>
    t
      .split('.')
      .map((s) => s + '='.repeat((4 - (s.length % 4)) % 4))
      .join('.'),
  );
  add(
    'standard base64 alphabet (+/) instead of base64url',
    (t) => t.replaceAll('-', '+').replaceAll('_', '/'),
    false,
    /[-_]/,
  );
  for (let i = 0; i < 8; i++) {
    const where = rand();
    const bit = int(0, 5);
    add(`signature bit ${bit} flipped at ${(where * 100).toFixed(1)} %`, (t) => {
      const [h, p, s] = t.split('.') as [string, string, string];
      const bytes = base64url.decode(s);
      bytes[Math.floor(where * bytes.length)]! ^= 1 << bit;
      return `${h}.${p}.${base64url.encode(bytes)}`;
    });
  }
  for (let i = 0; i < 4; i++) {
    const where = rand();
    add(`payload character changed at ${(where * 100).toFixed(1)} %`, (t) => {
      const [h, p, s] = t.split('.') as [string, string, string];
      const at = Math.floor(where * p.length);
      const c = p[at] === 'A' ? 'B' : 'A';
      return `${h}.${p.slice(0, at)}${c}${p.slice(at + 1)}.${s}`;
    });
  }
  cases.push({
    what: "encoding: another request's payload with this one's signature",
    send: async () => {
      const [h, , s] = (await good()).split('.') as [string, string, string];
      const [, p2] = (await good()).split('.') as [string, string, string];
      return putWith(`${h}.${p2}.${s}`, body, newerCreatedAt);
    },
  });
  add('8 KiB of padding in the signature', (t) => `${t}${'A'.repeat(8 * 1024)}`);
  add('64 KiB token', (t) => `${t.split('.')[0]}.${b64u(64 * 1024)}.${t.split('.')[2]}`, true);
  add('1 MiB token', (t) => `${t.split('.')[0]}.${'A'.repeat(MiB)}.${t.split('.')[2]}`, true);
  add('empty token', () => '');
  add('only dots', () => '..');
  add('NUL in the token', (t) => `${t.slice(0, 10)}\u0000${t.slice(10)}`, true);
  add('non-ASCII in the token', (t) => `${t.slice(0, 10)}\u00e9${t.slice(10)}`, true);
  // Scheme games: the token is good, the header around it is not.
  const scheme = (what: string, make: (t: string) => [string, string][], runtime = false) =>
    cases.push({
      what: `encoding: ${what}`,
      runtime,
      send: async () =>
        raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ...make(await good()),
            ['content-length', String(body.length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
        }),
    });
  scheme('Bearer scheme', (t) => [['authorization', `Bearer ${t}`]]);
  scheme('lower-case scheme', (t) => [['authorization', `gem-signature ${t}`]]);
  scheme('no space after the scheme', (t) => [['authorization', `GEM-Signature${t}`]]);
  scheme('scheme alone', () => [['authorization', 'GEM-Signature']]);
  scheme('two Authorization headers', (t) => [
    ['authorization', `GEM-Signature ${t}`],
    ['authorization', `GEM-Signature ${t}`],
  ]);
  scheme('the token in another header', (t) => [['x-gem-signature', t]]);
  scheme('the token in a cookie', (t) => [['cookie', `GEM-Signature=${t}`]]);
  return cases;
}

/** The HTTP layer: lengths that lie or are missing, oversize bodies, methods and paths that differ from the signed ones. */
async function httpCases(): Promise<Case[]> {
  const cases: Case[] = [];
  const add = (what: string, send: Case['send'], extra: Partial<Case> = {}) =>
    cases.push({ what: `http: ${what}`, send, ...extra });
  const signedPut = async (body: Buffer, over: Claims = {}) =>
    `GEM-Signature ${await sign(inst, { ...validClaims(inst, 'PUT', '/v1/dr/backup', body, newerCreatedAt), ...over })}`;
  const bodyOf = () => randomBytes(int(1000, 20_000));

  add('no Content-Length, chunked body', async () => {
    const body = bodyOf();
    return raw({
      method: 'PUT',
      target: '/v1/dr/backup',
      headers: [
        ['authorization', await signedPut(body)],
        [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
      ],
      body,
      chunked: true,
    });
  });
  add('no Content-Length and no body, bln says bytes follow', async () => {
    const body = bodyOf();
    return raw({
      method: 'PUT',
      target: '/v1/dr/backup',
      headers: [
        ['authorization', await signedPut(body)],
        [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
      ],
    });
  });
  for (let i = 0; i < 4; i++) {
    const extra = int(1, 5000);
    add(
      `Content-Length and bln ${extra} bytes bigger than the body (connection ends)`,
      async () => {
        const body = bodyOf();
        const length = body.length + extra;
        return raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ['authorization', await signedPut(body, { bln: length })],
            ['content-length', String(length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
          halfClose: true,
        });
      },
      { runtime: true },
    );
  }
  for (let i = 0; i < 4; i++) {
    const less = int(1, 900);
    add(`Content-Length and bln ${less} bytes smaller than the body`, async () => {
      const body = bodyOf();
      const length = body.length - less;
      return raw({
        method: 'PUT',
        target: '/v1/dr/backup',
        headers: [
          ['authorization', await signedPut(body, { bln: length })],
          ['content-length', String(length)],
          [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
        ],
        body,
      });
    });
  }
  for (let i = 0; i < 3; i++) {
    const delta = pick([-1, 1]) * int(1, 500);
    add(
      `Content-Length ${delta > 0 ? 'bigger' : 'smaller'} than the signed bln by ${Math.abs(delta)}`,
      async () => {
        const body = bodyOf();
        return raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ['authorization', await signedPut(body)],
            ['content-length', String(body.length + delta)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body: delta > 0 ? Buffer.concat([body, randomBytes(delta)]) : body.subarray(0, body.length + delta),
        });
      },
    );
  }
  for (const cl of ['abc', '-1', '1e3', '0x10', '+12', '12, 12', '99999999999999999999999']) {
    add(
      `Content-Length ${JSON.stringify(cl)}`,
      async () => {
        const body = bodyOf();
        return raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ['authorization', await signedPut(body)],
            ['content-length', cl],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
          halfClose: true,
        });
      },
      { runtime: true },
    );
  }
  add(
    'two different Content-Length headers',
    async () => {
      const body = bodyOf();
      return raw({
        method: 'PUT',
        target: '/v1/dr/backup',
        headers: [
          ['authorization', await signedPut(body)],
          ['content-length', String(body.length)],
          ['content-length', String(body.length - 10)],
          [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
        ],
        body,
        halfClose: true,
      });
    },
    { runtime: true },
  );
  add(
    'Content-Length and Transfer-Encoding together',
    async () => {
      const body = bodyOf();
      return raw({
        method: 'PUT',
        target: '/v1/dr/backup',
        headers: [
          ['authorization', await signedPut(body)],
          ['content-length', String(body.length)],
          [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
        ],
        body,
        chunked: true,
        halfClose: true,
      });
    },
    { runtime: true },
  );
  for (const over of [1, int(2, 1_000_000), 10 * MAX_SLOT_BYTES]) {
    add(
      `a body ${over} bytes above the slot cap (announced, not sent)`,
      async () => {
        const body = bodyOf();
        const length = MAX_SLOT_BYTES + over;
        return raw({
          method: 'PUT',
          target: '/v1/dr/backup',
          headers: [
            ['authorization', await signedPut(body, { bln: length })],
            ['content-length', String(length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
          halfClose: true,
        });
      },
      { runtime: true, status: [413] },
    );
  }
  // Method differs from the signed one.
  for (const [signed, sent] of [
    ['PUT', 'POST'],
    ['PUT', 'PATCH'],
    ['PUT', 'DELETE'],
    ['PUT', 'GET'],
    ['GET', 'PUT'],
    ['HEAD', 'DELETE'],
    ['GET', 'DELETE'],
    ['DELETE', 'PUT'],
  ] as const) {
    add(`signed ${signed}, sent ${sent}`, async () => {
      const body = sent === 'PUT' || sent === 'POST' || sent === 'PATCH' ? bodyOf() : Buffer.alloc(0);
      const claims = validClaims(inst, signed, '/v1/dr/backup', body, newerCreatedAt);
      return raw({
        method: sent,
        target: '/v1/dr/backup',
        headers: [
          ['authorization', `GEM-Signature ${await sign(inst, claims)}`],
          ['content-length', String(body.length)],
          [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
        ],
        body,
      });
    });
  }
  // Paths: query strings and traversal, signed exactly as sent.
  const paths = [
    '/v1/dr/backup?x=1',
    '/v1/dr/backup?/../../installations',
    '/v1/dr/backup%3Fx=1',
    '/v1/dr/../installations',
    '/v1/dr/%2e%2e/installations',
    '/v1/dr/%2E%2E/%2E%2E/v1/installations',
    '/v1/dr/backup/..',
    '/v1/dr/backup/../backup',
    '/v1/dr/backup%2f..%2f..%2finstallations',
    '/v1/dr/backup/',
    '/v1/dr/backup//',
    '/v1/dr/BACKUP',
    '/v1//dr/backup',
    '/v1/dr/backup;x=1',
    '/v1/dr/backup%00',
    '/v1/dr/backup#frag',
    '/./v1/dr/backup/.',
    'http://evil.example/v1/dr/backup',
    `/v1/dr/${junk(int(3, 20)).replace(/[?#%\s]/g, 'x')}`,
  ];
  for (const path of paths) {
    add(
      `signed and sent to ${path}`,
      async () => {
        const body = bodyOf();
        const claims = validClaims(inst, 'PUT', path, body, newerCreatedAt);
        return raw({
          method: 'PUT',
          target: path,
          headers: [
            ['authorization', `GEM-Signature ${await sign(inst, claims)}`],
            ['content-length', String(body.length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
        });
      },
      { runtime: path.startsWith('http') },
    );
    // Targets the runtime normalizes to /v1/dr/backup itself (dot segments, a fragment) are that resource, as signed.
    if (['/v1/dr/backup/../backup', '/v1/dr/backup#frag'].includes(path)) continue;
    add(
      `signed for /v1/dr/backup, sent to ${path}`,
      async () => {
        const body = bodyOf();
        return raw({
          method: 'PUT',
          target: path,
          headers: [
            ['authorization', await signedPut(body)],
            ['content-length', String(body.length)],
            [BACKUP_CREATED_AT_HEADER, newerCreatedAt],
          ],
          body,
        });
      },
      { runtime: path.startsWith('http') },
    );
  }
  return cases;
}

/** Enrollment: bad tokens, re-binding to another key, malformed keys and ids. */
async function enrollmentCases(): Promise<{ cases: Case[]; freshIds: string[] }> {
  const cases: Case[] = [];
  const freshIds: string[] = [];
  const post = (authorization: string | null, body: string | Buffer): Case['send'] => {
    return () => {
      const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body);
      const headers: [string, string][] = [
        ['content-type', 'application/json'],
        ['content-length', String(bytes.length)],
      ];
      if (authorization !== null) headers.push(['authorization', authorization]);
      return raw({ method: 'POST', target: '/v1/installations', headers, body: bytes });
    };
  };
  const goodKey = (await newInstallation()).publicJwk;
  const fresh = () => {
    const id = hex(32);
    freshIds.push(id);
    return id;
  };
  const tokens = [
    null,
    '',
    'Bearer',
    'Bearer ',
    `Bearer ${ENROLLMENT_TOKEN}x`,
    `Bearer ${ENROLLMENT_TOKEN.slice(0, -1)}`,
    `Bearer ${ENROLLMENT_TOKEN.toUpperCase()}`,
    `bearer${ENROLLMENT_TOKEN}`,
    `Basic ${ENROLLMENT_TOKEN}`,
    `Bearer ${ENROLLMENT_TOKEN} ${ENROLLMENT_TOKEN}`,
    `GEM-Signature ${ENROLLMENT_TOKEN}`,
    `Bearer ${junk(int(1, 40))}`,
    `Bearer ${junk(int(1, 40))}`,
    `Bearer ${'A'.repeat(32 * 1024)}`,
  ];
  for (const token of tokens) {
    const body = JSON.stringify({ installationId: fresh(), publicKey: goodKey });
    cases.push({
      what: `enrollment with token ${JSON.stringify(token)?.slice(0, 40)}`,
      send: post(token, body),
      status: [401],
    });
  }
  const bearer = `Bearer ${ENROLLMENT_TOKEN}`;
  for (const who of [inst, other]) {
    cases.push({
      what: `re-binding ${who === inst ? 'the attacked' : 'another'} installation to a new key`,
      send: post(bearer, JSON.stringify({ installationId: who.installationId, publicKey: goodKey })),
      status: [409],
    });
  }
  cases.push({
    what: "re-binding an installation to another's key",
    send: post(bearer, JSON.stringify({ installationId: inst.installationId, publicKey: other.publicJwk })),
    status: [409],
  });
  const badKeys: unknown[] = [
    { ...goodKey, kty: 'RSA' },
    { ...goodKey, crv: 'X25519' },
    { ...goodKey, crv: 'Ed448' },
    { ...goodKey, x: goodKey.x!.slice(1) },
    { ...goodKey, x: `${goodKey.x}A` },
    { ...goodKey, x: `${goodKey.x!.slice(0, 42)}+` },
    { ...goodKey, x: `${goodKey.x!.slice(0, 42)}=` },
    { kty: 'OKP', crv: 'Ed25519' },
    { ...goodKey, d: b64u(43) },
    { ...goodKey, x: 12345 },
    { kty: 'EC', crv: 'P-256', x: b64u(43), y: b64u(43) },
    { kty: 'oct', k: b64u(43) },
    JSON.stringify(goodKey),
    [goodKey],
    null,
  ];
  for (const key of badKeys) {
    cases.push({
      what: `enrollment with the key ${JSON.stringify(key)?.slice(0, 60)}`,
      send: post(bearer, JSON.stringify({ installationId: fresh(), publicKey: key })),
      status: [422],
    });
  }
  const badIds: unknown[] = [
    hex(32).toUpperCase(),
    hex(31),
    hex(33),
    `${hex(31)}g`,
    `../${hex(29)}`,
    `${hex(16)}\u0000${hex(15)}`,
    '\uff10'.repeat(32),
    12345,
    null,
    '',
    hex(pick([int(1, 31), int(33, 200)])),
  ];
  for (const id of badIds) {
    cases.push({
      what: `enrollment of the id ${JSON.stringify(id)?.slice(0, 50)}`,
      send: post(bearer, JSON.stringify({ installationId: id, publicKey: goodKey })),
      status: [422],
    });
  }
  for (const [what, body] of [
    ['not JSON', '{"installationId":'],
    ['a JSON array', '[]'],
    ['JSON null', 'null'],
    ['an empty body', ''],
    [
      'a body over 64 KiB',
      JSON.stringify({ installationId: fresh(), publicKey: { ...goodKey, pad: 'x'.repeat(70_000) } }),
    ],
    ['deep nesting', `${'['.repeat(5000)}${']'.repeat(5000)}`],
  ] as const) {
    cases.push({ what: `enrollment body ${what}`, send: post(bearer, body) });
  }
  return { cases, freshIds };
}

/** Recovery: unknown and malformed ids, malformed, non-X25519 and low-order recipients. */
async function recoveryCases(): Promise<Case[]> {
  const cases: Case[] = [];
  const recover =
    (body: unknown): Case['send'] =>
    () => {
      const bytes = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
      return raw({
        method: 'POST',
        target: '/v1/recover',
        headers: [
          ['content-type', 'application/json'],
          ['content-length', String(bytes.length)],
          ['cf-connecting-ip', `198.51.100.${int(1, 254)}`],
        ],
        body: bytes,
      });
    };
  const recipient = (await x25519Pair('recovery')).publicJwk;
  const id = inst.installationId;
  for (let i = 0; i < 4; i++) {
    cases.push({
      what: 'recovery of an unknown id',
      send: recover({ installationId: hex(32), recipient }),
      status: [404],
    });
  }
  cases.push({
    what: 'recovery of an enrolled id without a backup',
    send: recover({
      installationId: probe.installationId.replace(/.$/, (c) => (c === '0' ? '1' : '0')),
      recipient,
    }),
    status: [404],
  });
  for (const bad of [id.toUpperCase(), id.slice(1), `${id}0`, `../${id.slice(3)}`, 12345, null, '']) {
    cases.push({
      what: `recovery of the id ${JSON.stringify(bad)?.slice(0, 40)}`,
      send: recover({ installationId: bad, recipient }),
      status: [422],
    });
  }
  const ed = (await newInstallation()).publicJwk;
  const p256 = await exportJWK(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
  const rsa = await exportJWK(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey);
  const malformed: unknown[] = [
    ed,
    { ...ed, crv: 'X25519', kty: 'OKP', x: ed.x, d: b64u(43) },
    p256,
    rsa,
    { kty: 'OKP', crv: 'X448', x: b64u(75) },
    { kty: 'OKP', crv: 'X25519' },
    { ...recipient, x: recipient.x!.slice(1) },
    { ...recipient, x: `${recipient.x!.slice(0, 42)}+` },
    { ...recipient, x: 12345 },
    { ...recipient, kid: 12345 },
    JSON.stringify(recipient),
    [recipient],
    null,
  ];
  for (const r of malformed) {
    cases.push({
      what: `recovery to the recipient ${JSON.stringify(r)?.slice(0, 60)}`,
      send: recover({ installationId: id, recipient: r }),
      status: [422],
    });
  }
  // Points of small order: X25519 with them gives an all-zero secret, which WebCrypto refuses.
  const lowOrder = [
    '0000000000000000000000000000000000000000000000000000000000000000',
    '0100000000000000000000000000000000000000000000000000000000000000',
    'e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800',
    '5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157',
    'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
    'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  ].map((h) => base64url.encode(Buffer.from(h, 'hex')));
  for (const x of lowOrder) {
    cases.push({
      what: `recovery to a low-order X25519 point ${x.slice(0, 10)}…`,
      send: recover({ installationId: id, recipient: { kty: 'OKP', crv: 'X25519', x, kid: 'r' } }),
    });
  }
  cases.push({
    what: 'recovery to a recipient with a 60 KB kid',
    send: recover({ installationId: id, recipient: { ...recipient, kid: 'k'.repeat(60_000) } }),
  });
  for (const [what, body] of [
    ['not JSON', '{"installationId":'],
    ['a JSON array', '[]'],
    ['no recipient', JSON.stringify({ installationId: id })],
    ['a body over 64 KiB', JSON.stringify({ installationId: id, recipient, pad: 'x'.repeat(70_000) })],
  ] as const) {
    cases.push({ what: `recovery body ${what}`, send: recover(body) });
  }
  return cases;
}

// ---------------------------------------------------------------- multipart

async function createUpload(who: TestInstallation, size: number, createdAt = newerCreatedAt) {
  const body = Buffer.from(
    JSON.stringify({ size, sha256: hex(64), createdAt, agentVersion: 'hostile-test', partSize: 5 * MiB }),
  );
  const answer = await signedRequest(who, 'POST', '/v1/dr/uploads', body);
  if ('closed' in answer || answer.status !== 201)
    throw new Error(`create upload: ${JSON.stringify(answer)}`);
  return JSON.parse(answer.body.toString()) as { uploadId: string; partSize: number };
}

function putPart(
  who: TestInstallation,
  target: string,
  body: Buffer,
  over: Claims = {},
  signedPath = target,
) {
  return (async () => {
    const claims = { ...validClaims(who, 'PUT', signedPath, body), ...over };
    return raw({
      method: 'PUT',
      target,
      headers: [
        ['authorization', `GEM-Signature ${await sign(who, claims)}`],
        ['content-length', String(body.length)],
      ],
      body,
    });
  })();
}

async function uploadParts(who: TestInstallation, uploadId: string): Promise<number[] | number> {
  const answer = await signedRequest(who, 'GET', `/v1/dr/uploads/${uploadId}`);
  if ('closed' in answer) return 0;
  if (answer.status !== 200) return answer.status;
  return (JSON.parse(answer.body.toString()) as { parts: { n: number }[] }).parts.map((p) => p.n);
}

async function multipartCases(): Promise<{ cases: Case[]; check: () => Promise<string[]> }> {
  const cases: Case[] = [];
  const add = (what: string, send: Case['send'], extra: Partial<Case> = {}) =>
    cases.push({ what: `multipart: ${what}`, send, ...extra });
  // Two parts: 5 MiB and 100 bytes. None is ever sent right.
  const two = await createUpload(inst, 5 * MiB + 100);
  const base = `/v1/dr/uploads/${two.uploadId}`;
  const small = () => randomBytes(100);
  const numbers = [
    '0',
    '-1',
    '10001',
    '3',
    String(int(3, 10_000)),
    String(int(10_001, 2 ** 31)),
    'abc',
    '1.0',
    '1e0',
    '0x1',
    '+1',
    '%201',
    '2%00',
    '99999999999999999999',
    'NaN',
    'Infinity',
    junk(int(1, 6)).replace(/[/?#%\s]/g, 'x'),
  ];
  for (const n of numbers)
    add(`part number ${JSON.stringify(n)}`, () => putPart(inst, `${base}/parts/${n}`, small()));
  add('part 2 with bln 99 (one byte short of its size)', () =>
    putPart(inst, `${base}/parts/2`, small().subarray(0, 99)),
  );
  add('part 2 with bln 101', () => putPart(inst, `${base}/parts/2`, randomBytes(101)));
  add('part 2 empty', () => putPart(inst, `${base}/parts/2`, Buffer.alloc(0)));
  add('part 1 of 100 bytes (it must be 5 MiB)', () => putPart(inst, `${base}/parts/1`, small()));
  add('part 2 with a flipped byte after signing', async () => {
    const body = small();
    const claims = validClaims(inst, 'PUT', `${base}/parts/2`, body);
    body[int(0, 99)]! ^= 1 << int(0, 7);
    return raw({
      method: 'PUT',
      target: `${base}/parts/2`,
      headers: [
        ['authorization', `GEM-Signature ${await sign(inst, claims)}`],
        ['content-length', '100'],
      ],
      body,
    });
  });
  add('part 2 signed for part 1', () => putPart(inst, `${base}/parts/2`, small(), {}, `${base}/parts/1`));
  add('complete with no part received', () => signedRequest(inst, 'POST', `${base}/complete`), {
    status: [400],
  });

  // Another installation's upload: invisible to this one.
  const theirs = await createUpload(other, 100);
  const theirBase = `/v1/dr/uploads/${theirs.uploadId}`;
  add("status of another installation's upload", () => signedRequest(inst, 'GET', theirBase), {
    status: [404],
  });
  add("a part into another installation's upload", () => putPart(inst, `${theirBase}/parts/1`, small()), {
    status: [404],
  });
  add(
    "complete of another installation's upload",
    () => signedRequest(inst, 'POST', `${theirBase}/complete`),
    {
      status: [404],
    },
  );
  add("abort of another installation's upload", () => signedRequest(inst, 'DELETE', theirBase), {
    status: [404],
  });

  // Aborted, then used.
  const aborted = await createUpload(inst, 100);
  const abortedBase = `/v1/dr/uploads/${aborted.uploadId}`;
  const abort = await signedRequest(inst, 'DELETE', abortedBase);
  expect('status' in abort && abort.status).toBe(200);
  add('a part after abort', () => putPart(inst, `${abortedBase}/parts/1`, small()), { status: [404] });
  add('complete after abort', () => signedRequest(inst, 'POST', `${abortedBase}/complete`), {
    status: [404],
  });
  add('abort twice', () => signedRequest(inst, 'DELETE', abortedBase), { status: [404] });

  // Upload ids that are not ids.
  for (const id of [
    two.uploadId.toUpperCase(),
    two.uploadId.slice(1),
    `${two.uploadId}0`,
    '..',
    '%2e%2e',
    '..%2fbackup',
    hex(32),
    junk(int(1, 20)).replace(/[/?#%\s]/g, 'x'),
  ]) {
    add(`status of upload ${JSON.stringify(id)}`, () => signedRequest(inst, 'GET', `/v1/dr/uploads/${id}`));
    add(`complete of upload ${JSON.stringify(id)}`, () =>
      signedRequest(inst, 'POST', `/v1/dr/uploads/${id}/complete`),
    );
  }

  // Creating uploads with hostile bodies.
  const createBody = (over: Record<string, unknown>) =>
    Buffer.from(
      JSON.stringify({
        size: 1000,
        sha256: hex(64),
        createdAt: newerCreatedAt,
        agentVersion: 'x',
        partSize: 5 * MiB,
        ...over,
      }),
    );
  const creates: [string, Buffer | string][] = [
    ['size 0', createBody({ size: 0 })],
    ['size -1', createBody({ size: -1 })],
    ['size 1.5', createBody({ size: 1.5 })],
    ['size as a string', createBody({ size: '1000' })],
    ['size above the slot cap', createBody({ size: MAX_SLOT_BYTES + int(1, 1000) })],
    ['size 2^53', createBody({ size: 2 ** 53 })],
    ['sha256 upper-case', createBody({ sha256: hex(64).toUpperCase() })],
    ['sha256 short', createBody({ sha256: hex(63) })],
    ['createdAt garbage', createBody({ createdAt: junk(12) })],
    ['createdAt not in ISO form', createBody({ createdAt: new Date(Date.now() - 60_000).toUTCString() })],
    ['createdAt older than the slot', createBody({ createdAt: '2000-01-01T00:00:00.000Z' })],
    ['partSize 0', createBody({ partSize: 0 })],
    ['partSize -5', createBody({ partSize: -5 })],
    ['agentVersion of 65 characters', createBody({ agentVersion: 'v'.repeat(65) })],
    ['no fields', '{}'],
    ['not JSON', '{"size":'],
    ['a JSON array', '[]'],
    ['a body over 64 KiB', createBody({ pad: 'x'.repeat(70_000) })],
  ];
  for (const [what, body] of creates) {
    add(`create with ${what}`, () => signedRequest(inst, 'POST', '/v1/dr/uploads', Buffer.from(body)));
  }
  add('create whose body differs from its signed sha256', async () => {
    const body = createBody({});
    const claims = validClaims(inst, 'POST', '/v1/dr/uploads', body);
    const sent = createBody({ size: 2000 });
    return raw({
      method: 'POST',
      target: '/v1/dr/uploads',
      headers: [
        ['authorization', `GEM-Signature ${await sign(inst, { ...claims, bln: sent.length })}`],
        ['content-length', String(sent.length)],
      ],
      body: sent,
    });
  });

  const check = async () => {
    const problems: string[] = [];
    const ours = await uploadParts(inst, two.uploadId);
    if (JSON.stringify(ours) !== '[]')
      problems.push(`the attacked upload now has parts ${JSON.stringify(ours)}`);
    const theirParts = await uploadParts(other, theirs.uploadId);
    if (JSON.stringify(theirParts) !== '[]')
      problems.push(`the other installation's upload answers ${JSON.stringify(theirParts)}`);
    return problems;
  };
  return { cases, check };
}

// ---------------------------------------------------------------- the tests

describe(`hostile input to the DR cloud (seed ${SEED})`, () => {
  it('accepts each unmutated baseline (on a probe installation)', async () => {
    await controlPut();
    const body = randomBytes(100);
    const created = await createUpload(probe, 100, new Date(Date.now() - 1000).toISOString());
    const part = await putPart(probe, `/v1/dr/uploads/${created.uploadId}/parts/1`, body);
    expect('status' in part && part.status).toBe(200);
  });

  it('refuses every mutated claim of a signed upload', async () => {
    expect(await runCases('claims', await claimCases())).toEqual([]);
  }, 60_000);

  it('refuses every JWS header trick', async () => {
    expect(await runCases('header', await headerCases())).toEqual([]);
  }, 60_000);

  it('refuses every broken encoding of the signature', async () => {
    expect(await runCases('encoding', await encodingCases())).toEqual([]);
  }, 60_000);

  it('refuses lying lengths, oversize bodies, other methods and other paths', async () => {
    expect(await runCases('http', await httpCases())).toEqual([]);
  }, 60_000);

  it('refuses enrollment abuse; a refused enrollment binds nothing', async () => {
    const { cases, freshIds } = await enrollmentCases();
    const failures = await runCases('enrollment', cases);
    // An id refused before (bad token, malformed key) is still free: enrolling it properly is a creation.
    const later = await newInstallation();
    for (const id of [freshIds[0]!, freshIds[freshIds.length - 1]!]) {
      const answer = await enroll(cloud, { ...later, installationId: id });
      if (answer.status !== 201) failures.push(`enrollment: id ${id} was bound by a refused request`);
    }
    expect(failures).toEqual([]);
  }, 60_000);

  it('refuses recovery abuse', async () => {
    expect(await runCases('recovery', await recoveryCases())).toEqual([]);
  }, 60_000);

  it('refuses multipart abuse; no part is recorded, the other upload is untouched', async () => {
    const { cases, check } = await multipartCases();
    const failures = await runCases('multipart', cases);
    failures.push(...(await check()));
    expect(failures).toEqual([]);
  }, 60_000);

  it('refuses a second complete of a completed upload', async () => {
    const created = await createUpload(inst, 100, new Date(Date.parse(slotCreatedAt) + 60_000).toISOString());
    const base = `/v1/dr/uploads/${created.uploadId}`;
    const body = randomBytes(100);
    const part = await putPart(inst, `${base}/parts/1`, body);
    expect('status' in part && part.status).toBe(200);
    const first = await signedRequest(inst, 'POST', `${base}/complete`);
    expect('status' in first && first.status).toBe(201);
    const failures = await runCases('multipart', [
      { what: 'complete twice', send: () => signedRequest(inst, 'POST', `${base}/complete`), status: [404] },
      { what: 'a part after complete', send: () => putPart(inst, `${base}/parts/1`, body), status: [404] },
      { what: 'abort after complete', send: () => signedRequest(inst, 'DELETE', base), status: [404] },
    ]);
    expect(failures).toEqual([]);
  });

  it('refuses to complete an upload dated in the future, and drops it', async () => {
    const future = new Date(Date.now() + int(2, 30) * DAY).toISOString();
    const created = await createUpload(inst, 100, future);
    const base = `/v1/dr/uploads/${created.uploadId}`;
    const part = await putPart(inst, `${base}/parts/1`, randomBytes(100));
    expect('status' in part && part.status).toBe(200);
    const failures = await runCases('multipart', [
      {
        what: `complete of an upload created ${future}`,
        send: () => signedRequest(inst, 'POST', `${base}/complete`),
        status: [400],
      },
      {
        what: 'complete again after that refusal',
        send: () => signedRequest(inst, 'POST', `${base}/complete`),
        status: [404],
      },
    ]);
    expect(failures).toEqual([]);
  });

  it('still serves the attacked installation afterwards', async () => {
    const body = randomBytes(1234);
    const createdAt = new Date(Date.now() - 60_000).toISOString();
    expect(await putSlot(inst, body, createdAt)).toBe(201);
    const got = await signedRequest(inst, 'GET', '/v1/dr/backup');
    expect('status' in got && got.status).toBe(200);
    expect('body' in got && sha256(got.body)).toBe(sha256(body));
    expect(report.failures).toEqual([]);
  });
});
