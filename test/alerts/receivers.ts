// Alert receivers on loopback for the alert tests: a webhook whose answer the test sets, and a plain
// SMTP server (no STARTTLS, no AUTH) that accepts every message or refuses its recipients.
import { createServer, type Server } from 'node:http';
import net, { type AddressInfo } from 'node:net';

export interface WebhookReceiver {
  url: string;
  /** The bodies answered 2xx, parsed. */
  received: Array<Record<string, unknown>>;
  /** How many requests came, whatever their answer. */
  requests: number;
  /** What the next requests are answered (204 at first). */
  answer: number;
  /** The answers of the next requests, in order, before `answer` again (each taken by one request). */
  answers: number[];
  close(): Promise<void>;
}

/** A real HTTP server on 127.0.0.1 answering every POST to `path` with `answer`. */
export async function startWebhook(path = '/hook'): Promise<WebhookReceiver> {
  const receiver: WebhookReceiver = {
    url: '',
    received: [],
    requests: 0,
    answer: 204,
    answers: [],
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      receiver.requests += 1;
      const status = receiver.answers.shift() ?? receiver.answer;
      if (status < 300) receiver.received.push(JSON.parse(Buffer.concat(parts).toString('utf8')));
      res.writeHead(status).end();
    });
  });
  receiver.url = `http://127.0.0.1:${await listen(server)}${path}`;
  return receiver;
}

export interface SmtpReceiver {
  port: number;
  /** Each accepted message's text (headers and body). */
  messages: string[];
  /** A reply that refuses every RCPT TO (e.g. `550 5.7.1 relaying denied`), or undefined to accept. */
  refuseRecipients: string | undefined;
  close(): Promise<void>;
}

/** A plain SMTP server on 127.0.0.1 (no STARTTLS, no AUTH), on `port` (default: a free one). */
export async function startSmtp(port = 0): Promise<SmtpReceiver> {
  const server = net.createServer((socket) => converse(socket, receiver));
  const receiver: SmtpReceiver = {
    port: await listen(server, port),
    messages: [],
    refuseRecipients: undefined,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  return receiver;
}

/** One SMTP conversation: a reply per command line, the message's lines between DATA and `.`. */
function converse(socket: net.Socket, receiver: SmtpReceiver): void {
  let buffer = '';
  let message: string | undefined;
  const reply = (text: string) => socket.write(`${text}\r\n`);
  socket.on('error', () => {});
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('utf8');
    for (let end = buffer.indexOf('\r\n'); end >= 0; end = buffer.indexOf('\r\n')) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (message !== undefined) {
        if (line !== '.') message += `${line}\n`;
        else {
          receiver.messages.push(message);
          message = undefined;
          reply('250 queued');
        }
        continue;
      }
      const verb = line.split(/[ :]/)[0]!.toUpperCase();
      if (verb === 'EHLO') reply('250-test.local\r\n250 8BITMIME');
      else if (verb === 'RCPT') reply(receiver.refuseRecipients ?? '250 ok');
      else if (verb === 'DATA') {
        message = '';
        reply('354 end with .');
      } else if (verb === 'QUIT') socket.end('221 bye\r\n');
      else reply('250 ok');
    }
  });
  reply('220 test.local ESMTP');
}

async function listen(server: net.Server, port = 0): Promise<number> {
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}
