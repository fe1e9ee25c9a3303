// Starts a test file's services side by side; if one fails to start, the others are stopped again.

/** Something a test service start resolves to: it is ended by dispose(), stop(), close() or remove() (a build). */
type Stoppable = object;

type Started<T extends Record<string, () => Promise<Stoppable>>> = {
  [K in keyof T]: Awaited<ReturnType<T[K]>>;
};

/** Ends a started service for good: dispose() when it has one (stop() may keep state for a restart), else stop(), close() or remove(). */
export async function releaseService(service: Stoppable): Promise<void> {
  const s = service as {
    dispose?: () => Promise<unknown>;
    stop?: () => Promise<unknown>;
    close?: () => Promise<unknown>;
    remove?: () => Promise<unknown>;
  };
  if (typeof s.dispose === 'function') await s.dispose();
  else if (typeof s.stop === 'function') await s.stop();
  else if (typeof s.close === 'function') await s.close();
  else if (typeof s.remove === 'function') await s.remove();
}

/**
 * Runs every start at once and resolves with the services by name, e.g.
 * `({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }))`. When any start rejects,
 * the ones that did start are stopped (their processes, Unix users and temp dirs go) before the first
 * error, in the order given, is rethrown unchanged, so its install hint still reaches the reader.
 */
export async function startAll<T extends Record<string, () => Promise<Stoppable>>>(
  starts: T,
): Promise<Started<T>> {
  const names = Object.keys(starts) as (keyof T & string)[];
  const settled = await Promise.allSettled(names.map((name) => starts[name]!()));
  const failed = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed === undefined) {
    const services = {} as Record<string, unknown>;
    names.forEach((name, i) => {
      services[name] = (settled[i] as PromiseFulfilledResult<Stoppable>).value;
    });
    return services as Started<T>;
  }
  // A failure to stop one must not hide why the start failed, nor keep the others running.
  await Promise.allSettled(
    settled.flatMap((result) => (result.status === 'fulfilled' ? [releaseService(result.value)] : [])),
  );
  throw failed.reason;
}
