/** One-time download tickets: lets the browser save a large backup natively without putting the admin token in a URL. */
import { randomBytes } from 'node:crypto';

/**
 * `path` as logs may record it: a download link's ticket is the credential (a HEAD leaves it usable), so
 * the audit log and the error log name the link, not the ticket. The POST that issued it names the backup.
 */
export function pathForLogs(path: string): string {
  return path.replace(/^\/download\/[^/]*/, '/download/(ticket)');
}

/** How long a ticket stays valid after it was issued. */
export const TICKET_LIFETIME_MS = 60_000;

interface Ticket {
  filename: string;
  expiresAt: number;
}

/** Tickets of one agent, kept in memory only: a restart simply invalidates them. */
export class DownloadTickets {
  private readonly tickets = new Map<string, Ticket>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Issues a ticket for one download of `filename`, valid for TICKET_LIFETIME_MS. */
  issue(filename: string): string {
    this.sweep();
    const ticket = randomBytes(24).toString('base64url');
    this.tickets.set(ticket, { filename, expiresAt: this.now() + TICKET_LIFETIME_MS });
    return ticket;
  }

  /** The ticket's file name without using it up (a HEAD request); undefined if unknown or expired. */
  peek(ticket: string): string | undefined {
    const entry = this.tickets.get(ticket);
    if (!entry || entry.expiresAt < this.now()) return undefined;
    return entry.filename;
  }

  /** Returns the ticket's file name and forgets the ticket (single use); undefined if unknown or expired. */
  redeem(ticket: string): string | undefined {
    const entry = this.tickets.get(ticket);
    this.tickets.delete(ticket);
    if (!entry || entry.expiresAt < this.now()) return undefined;
    return entry.filename;
  }

  private sweep(): void {
    const now = this.now();
    for (const [ticket, entry] of this.tickets) if (entry.expiresAt < now) this.tickets.delete(ticket);
  }
}

const perAgent = new WeakMap<object, DownloadTickets>();

/** The ticket store of an agent (one per agent object, so parallel test agents don't share tickets). */
export function ticketsFor(agent: object): DownloadTickets {
  let tickets = perAgent.get(agent);
  if (!tickets) {
    tickets = new DownloadTickets();
    perAgent.set(agent, tickets);
  }
  return tickets;
}
