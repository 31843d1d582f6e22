import diagnostics from 'node:diagnostics_channel';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { type Clock, systemClock } from './clock';

/** One estimate of the host clock's offset from an AWS endpoint's clock. */
export interface SkewSample {
  /** Seconds the local clock is ahead (+) or behind (-) the server's Date header. */
  offsetSeconds: number;
  /** Host of the endpoint that answered (sts..., 169.254.169.254, ...). */
  source: string;
  at: number;
}

/**
 * Estimates clock skew from the Date headers of the HTTP responses the proxy already gets from
 * STS, IMDS and container endpoints (all of them go through node:http, whose diagnostics
 * channel reports every client response). No extra request is made. A Date header has
 * one-second resolution, so offsets under ~2 s are noise.
 */
export class ClockSkewMonitor {
  private last: SkewSample | undefined;
  private readonly onResponse = (message: unknown): void => {
    const { request, response } = message as { request: ClientRequest; response: IncomingMessage };
    const date = response.headers['date'];
    if (!date) return;
    const server = Date.parse(date);
    if (Number.isNaN(server)) return;
    // Compare with the midpoint of the response second: Date truncates to whole seconds.
    const offsetSeconds = Math.round((this.clock.now() - (server + 500)) / 100) / 10;
    this.last = { offsetSeconds, source: request.host, at: this.clock.now() };
    this.listener?.(this.last);
  };

  constructor(
    private readonly clock: Clock = systemClock,
    private readonly listener?: (s: SkewSample) => void,
  ) {}

  /** Starts observing; returns a function that stops. */
  start(): () => void {
    diagnostics.subscribe('http.client.response.finish', this.onResponse);
    return () => diagnostics.unsubscribe('http.client.response.finish', this.onResponse);
  }

  /** The latest estimate, if any AWS call has been made. */
  latest(): SkewSample | undefined {
    return this.last;
  }
}
