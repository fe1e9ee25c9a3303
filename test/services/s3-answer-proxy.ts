// A loopback proxy in front of a test S3 server (moto, s3rver) that holds its answer to one kind of
// request, the ways a real S3 answers late or never once an upload's bytes are all sent.
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Which requests a rule holds. */
export type HeldRequest = (req: IncomingMessage) => boolean;

/** CompleteMultipartUpload: POST with an uploadId. */
export const completeRequest: HeldRequest = (req) =>
  req.method === 'POST' && new URL(req.url ?? '/', 'http://x').searchParams.has('uploadId');

/** UploadPart of part `number`. */
export const partRequest =
  (number: number): HeldRequest =>
  (req) =>
    req.method === 'PUT' &&
    new URL(req.url ?? '/', 'http://x').searchParams.get('partNumber') === String(number);

/** HeadObject of the key ending in `name`. */
export const headRequest =
  (name: string): HeldRequest =>
  (req) =>
    req.method === 'HEAD' && new URL(req.url ?? '/', 'http://x').pathname.endsWith(name);

/**
 * How the proxy answers a held request: 'slow' forwards it and answers `delayMs` late (a Complete the
 * way AWS does: 200 at once, whitespace meanwhile, then the server's answer in the body); 'silent'
 * takes it and never answers; 'whitespace' takes it and sends whitespace after a 200 forever; 'error'
 * answers 200 with an error in the body, as AWS may answer a Complete; 'frozen' reads none of its body
 * and never answers (a server frozen mid-upload: the client's bytes stop once the socket's buffers fill).
 */
export type Answer = 'slow' | 'silent' | 'whitespace' | 'error' | 'frozen';

export interface AnswerProxy {
  endpoint: string;
  /** What is held now; undefined: every request goes through. */
  rule: { matches: HeldRequest; answer: Answer; delayMs?: number } | undefined;
  /** Requests the rule held. */
  held: number;
  /** Held requests whose client has not yet closed its connection. */
  heldOpen: number;
  close(): Promise<void>;
}

const XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n';

/** Begins a 200 answer and sends whitespace every 100 ms, until `stop` or the client goes. */
function keepAlive(res: ServerResponse): () => void {
  res.writeHead(200, { 'content-type': 'application/xml' });
  res.write(XML_DECLARATION);
  const timer = setInterval(() => res.write(' '), 100);
  const stop = () => clearInterval(timer);
  res.once('close', stop);
  return stop;
}

/** Sends `req` on to the server; `answer` gets its status, headers and whole body. */
function forward(
  port: number,
  req: IncomingMessage,
  res: ServerResponse,
  answer: (status: number, headers: IncomingMessage['headers'], body: Buffer) => void,
): void {
  const upstream = request(
    { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
    (reply) => {
      const chunks: Buffer[] = [];
      reply.on('data', (chunk: Buffer) => chunks.push(chunk));
      reply.once('end', () => answer(reply.statusCode ?? 502, reply.headers, Buffer.concat(chunks)));
      reply.once('error', (error) => res.destroy(error));
    },
  );
  upstream.once('error', (error) => res.destroy(error));
  req.pipe(upstream);
}

/** Starts the proxy on 127.0.0.1 in front of the server at `endpoint`, holding nothing. */
export async function startAnswerProxy(endpoint: string): Promise<AnswerProxy> {
  const port = Number(new URL(endpoint).port);
  const proxy: AnswerProxy = { endpoint: '', rule: undefined, held: 0, heldOpen: 0, close: async () => {} };
  const server: Server = createServer((req, res) => {
    const rule = proxy.rule?.matches(req) ? proxy.rule : undefined;
    if (rule) {
      proxy.held += 1;
      proxy.heldOpen += 1;
      res.once('close', () => {
        proxy.heldOpen -= 1;
      });
    }
    const delayMs = rule?.delayMs ?? 0;
    switch (rule?.answer) {
      case 'frozen':
        return;
      case 'silent':
        req.resume();
        return;
      case 'whitespace':
        req.resume();
        keepAlive(res);
        return;
      case 'error':
        req.resume();
        req.once('end', () => {
          keepAlive(res)();
          res.end(
            '<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>',
          );
        });
        return;
      case 'slow':
        if (completeRequest(req)) {
          const stop = keepAlive(res);
          const late = new Promise((resolve) => setTimeout(resolve, delayMs));
          forward(port, req, res, (_status, _headers, body) => {
            void late.then(() => {
              stop();
              res.end(body.toString('utf8').replace(/^\s*<\?xml[^>]*\?>/, ''));
            });
          });
          return;
        }
        break;
    }
    forward(port, req, res, (status, headers, body) => {
      setTimeout(() => {
        res.writeHead(status, headers);
        res.end(body);
      }, delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return proxy;
}
