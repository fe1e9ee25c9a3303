/**
 * The audit log: one JSON line per access to a backup or key route, with time, route and outcome; the
 * requests turned away for their token in a file of their own (audit-refused.log).
 */
import { appendFile, rename, stat } from 'node:fs/promises';
import { getConnInfo } from '@hono/node-server/conninfo';
import type { Context, MiddlewareHandler } from 'hono';
import { pathForLogs } from './download-tickets';

/** The size at which audit.log becomes audit.log.1 (replacing the one before): at most twice this on disk. */
const AUDIT_ROTATE_BYTES = 8 * 1024 * 1024;

/**
 * Where requests turned away for their token (401) are recorded, beside `audit.log`: anyone who can
 * reach the port can send those, so they rotate in their own file and can never push the record of an
 * authorized access out of `audit.log`.
 */
export function refusedAuditPath(auditPath: string): string {
  return auditPath.replace(/(\.log)?$/, '-refused.log');
}

export class AuditLog {
  private queue: Promise<void> = Promise.resolve();
  readonly refusedPath: string;
  constructor(
    private readonly path: string,
    private readonly rotateBytes = AUDIT_ROTATE_BYTES,
  ) {
    this.refusedPath = refusedAuditPath(path);
  }

  /**
   * Appends one record; writes are serialized so lines never interleave. A request turned away for
   * its token (status 401) goes to the refused log, everything else to the audit log. A log that
   * reached the rotation size is first renamed to `.1`: requests without a token (each one recorded)
   * cannot fill the disk the backups share.
   */
  record(entry: Record<string, unknown>): Promise<void> {
    const line = `${JSON.stringify({ time: new Date().toISOString(), ...entry })}\n`;
    const path = entry.status === 401 ? this.refusedPath : this.path;
    this.queue = this.queue
      .then(async () => {
        const size = await stat(path).then(
          (s) => s.size,
          () => 0,
        );
        if (size >= this.rotateBytes) await rename(path, `${path}.1`);
        await appendFile(path, line, { mode: 0o600 });
      })
      .catch(() => {});
    return this.queue;
  }

  /** Resolves when every record so far is written (shutdown). */
  flush(): Promise<void> {
    return this.queue;
  }
}

/** The address of the peer that sent the request; none when the app is called without a socket (app.request). */
function socketAddress(c: Context): string | undefined {
  try {
    return getConnInfo(c).remote.address;
  } catch {
    return undefined;
  }
}

/** The most characters of a request's path or X-Forwarded-For a record keeps. */
const AUDIT_FIELD_MAX = 256;

/**
 * `text` cut to AUDIT_FIELD_MAX characters, marked with `…` when cut: a client without a token sends
 * whatever path and X-Forwarded-For it likes (up to Node's 16 KB of headers), and each 401 is recorded.
 */
function clip(text: string): string {
  return text.length > AUDIT_FIELD_MAX ? `${text.slice(0, AUDIT_FIELD_MAX)}…` : text;
}

/**
 * Records every request it wraps (after it ran), whatever the outcome. `client` is the socket's peer
 * (what cannot be forged); X-Forwarded-For, which any client may send, is kept apart as `forwardedFor`.
 */
export function auditRoutes(audit: AuditLog): MiddlewareHandler {
  return async (c, next) => {
    let failed = false;
    try {
      await next();
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      const status = failed ? undefined : c.res.status;
      const forwarded = c.req.header('x-forwarded-for');
      void audit.record({
        method: c.req.method,
        route: clip(pathForLogs(c.req.path)),
        status,
        outcome: failed || (status !== undefined && status >= 400) ? 'error' : 'ok',
        client: socketAddress(c),
        forwardedFor: forwarded === undefined ? undefined : clip(forwarded),
      });
    }
  };
}
