// An S3 endpoint with a user and password in it (https://key:secret@host) is refused where it is typed,
// and where older settings hold one, before it reaches an answer or a log: the secret is never echoed.
// An endpoint given with provider "aws" must be Amazon's: another service is "other" (or its preset).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { s3Options } from '../../agent/offsite/destinations';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { withDefaults } from '../../agent/settings/model';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { call, FAST } from './helpers';

const SECRET = 'URLSECRET-7f3a';
const ENDPOINT = `http://user:${SECRET}@127.0.0.1:9`;
const s3 = {
  enabled: true,
  provider: 'other',
  accessKeyId: 'AKIAEXAMPLE',
  secretAccessKey: 'secret-key-example',
  bucket: 'gem',
  region: 'us-east-1',
  endpoint: ENDPOINT,
};

let pg: TestPostgres;
let t: TestAgent;
const logged: string[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, offsiteModule] });
  offsiteServiceFor(t.agent, FAST);
  for (const level of ['debug', 'info', 'warn', 'error'] as const) {
    const original = t.agent.log[level].bind(t.agent.log);
    t.agent.log[level] = (msg: string, fields?: Record<string, unknown>) => {
      logged.push(JSON.stringify([msg, fields ?? {}]));
      original(msg, fields);
    };
  }
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('an S3 endpoint that holds a user and password', () => {
  it('is refused by PUT settings and by Test Connection with a 422 on the endpoint; nothing saved, nothing echoed', async () => {
    const before = (await call(t, 'GET', '/settings')).body;
    for (const [method, path, body] of [
      ['PUT', '/settings', { offsite: { s3 } }],
      ['POST', '/offsite/s3/test', s3],
    ] as const) {
      const res = await call(t, method, path, body);
      expect(res.status, JSON.stringify(res.body)).toBe(422);
      expect(JSON.stringify(res.body)).toMatch(/endpoint/);
      expect(JSON.stringify(res.body)).toMatch(/must not hold a user name or password/);
      expect(JSON.stringify(res.body)).not.toContain(SECRET);
    }
    expect((await call(t, 'GET', '/settings')).body).toEqual(before);
    expect(logged.join('\n')).not.toContain(SECRET);
  });

  it('in settings saved before the rule, is refused by name before any connection, without the secret', () => {
    const saved = { ...withDefaults(undefined).offsite.s3, ...s3 } as Parameters<typeof s3Options>[0];
    let error: unknown;
    try {
      s3Options(saved);
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'unprocessable', details: { field: 'offsite.s3.endpoint' } });
    expect(String((error as Error).message)).not.toContain(SECRET);
    // The same endpoint without the credentials is accepted.
    expect(s3Options({ ...saved, endpoint: 'http://127.0.0.1:9' }).endpoint).toBe('http://127.0.0.1:9');
  });
});

describe('an endpoint with provider "aws" that is not Amazon S3', () => {
  it('is refused by PUT settings and by Test Connection with a 422 on the endpoint; nothing saved', async () => {
    const before = (await call(t, 'GET', '/settings')).body;
    const minioAsAws = { ...s3, provider: 'aws', endpoint: 'http://127.0.0.1:9000' };
    for (const [method, path, body] of [
      ['PUT', '/settings', { offsite: { s3: minioAsAws } }],
      ['POST', '/offsite/s3/test', minioAsAws],
    ] as const) {
      const res = await call(t, method, path, body);
      expect(res.status, JSON.stringify(res.body)).toBe(422);
      expect(res.body).toMatchObject({ error: { details: { field: expect.stringMatching(/endpoint$/) } } });
      expect(JSON.stringify(res.body)).toMatch(/Amazon S3 needs no endpoint/);
    }
    expect((await call(t, 'GET', '/settings')).body).toEqual(before);
  });

  it('an Amazon endpoint with provider "aws", any endpoint with "other", and a turned-off section saved before the rule, are saved', async () => {
    for (const section of [
      { ...s3, provider: 'aws', endpoint: 'https://s3.eu-central-1.amazonaws.com', region: 'eu-central-1' },
      { ...s3, provider: 'other', endpoint: 'http://127.0.0.1:9000' },
      // The page sends every section with each save: an old turned-off one must not block the others.
      { ...s3, enabled: false, provider: 'aws', endpoint: 'http://127.0.0.1:9000' },
    ]) {
      const res = await call(t, 'PUT', '/settings', { offsite: { s3: section } });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({
        offsite: { s3: { provider: section.provider, endpoint: section.endpoint } },
      });
    }
  });
});
