// A 422 from a zod schema reads in plain words ("must be at least 1"), naming the field; zod's own wording never reaches the page.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { validationError } from '../../agent/http/errors';
import { SettingsUpdate } from '../../shared/api/settings';

/** The 422 the agent answers for `body` against `schema`: its message and details. */
function refusal(schema: z.ZodType, body: unknown) {
  const parsed = schema.safeParse(body);
  if (parsed.success) throw new Error(`expected ${JSON.stringify(body)} to be refused`);
  const error = validationError(parsed.error);
  expect(error.status).toBe(422);
  expect(error.code).toBe('unprocessable');
  return {
    message: error.message,
    details: error.details as { field: string; issues: Array<{ field: string; message: string }> },
  };
}

const autoBackup = { enabled: true, schedule: 'daily', maxBackups: 10 };

describe('validationError: plain words, the field path kept', () => {
  it.each([
    [{ autoBackup: { ...autoBackup, maxBackups: 0 } }, 'autoBackup.maxBackups: must be at least 1'],
    [{ autoBackup: { ...autoBackup, maxBackups: 500 } }, 'autoBackup.maxBackups: must be at most 100'],
    [{ autoBackup: { ...autoBackup, maxBackups: 2.5 } }, 'autoBackup.maxBackups: must be a whole number'],
    [{ autoBackup: { ...autoBackup, maxBackups: '7' } }, 'autoBackup.maxBackups: must be a number'],
    [{ autoBackup: { ...autoBackup, enabled: 'yes' } }, 'autoBackup.enabled: must be true or false'],
    [
      { autoBackup: { ...autoBackup, schedule: 'yearly' } },
      'autoBackup.schedule: must be one of hourly, daily, weekly, monthly',
    ],
    [{ autoBackup: { ...autoBackup, colour: 'red' } }, 'autoBackup: unknown field: colour'],
  ])('%j -> %s', (body, message) => {
    const { message: said, details } = refusal(SettingsUpdate, body);
    expect(said).toBe(message);
    expect(said).not.toMatch(/Too small|Too big|expected|Invalid|>=|<=/);
    expect(details.field).toBe(message.slice(0, message.indexOf(':')));
    expect(details.issues[0]).toEqual({
      field: details.field,
      message: message.slice(details.field.length + 2),
    });
  });

  it('strings, lists, required keys and URLs in words; a message a schema wrote itself is kept', () => {
    const schema = z
      .object({
        name: z.string().min(1).max(3),
        code: z.string().min(4),
        tags: z.array(z.string()).min(1),
        url: z.url(),
        count: z.number(),
        host: z.string().refine((h) => h !== 'bad', 'unknown host'),
      })
      .strict();
    const good = {
      name: 'abc',
      code: 'abcd',
      tags: ['x'],
      url: 'https://example.com/',
      count: 1,
      host: 'ok',
    };
    const words = (body: Record<string, unknown>) => refusal(schema, { ...good, ...body }).message;
    expect(words({ name: '' })).toBe('name: must not be empty');
    expect(words({ name: 'abcd' })).toBe('name: must be at most 3 characters long');
    expect(words({ code: 'ab' })).toBe('code: must be at least 4 characters long');
    expect(words({ tags: [] })).toBe('tags: must be at least 1 item');
    expect(words({ url: 'nope' })).toBe('url: must be a URL (https://…)');
    expect(words({ count: undefined })).toBe('count: is required');
    expect(words({ host: 'bad' })).toBe('host: unknown host');
  });

  it('every issue is in details with its own field path', () => {
    const { details } = refusal(SettingsUpdate, {
      autoBackup: { ...autoBackup, maxBackups: 0, schedule: 'yearly' },
    });
    expect(details.issues).toEqual(
      expect.arrayContaining([
        { field: 'autoBackup.maxBackups', message: 'must be at least 1' },
        { field: 'autoBackup.schedule', message: 'must be one of hourly, daily, weekly, monthly' },
      ]),
    );
  });
});
