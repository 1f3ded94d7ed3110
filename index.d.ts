// Type definitions for cf-invalidation-tracker.

import type { IncomingMessage, ServerResponse } from 'node:http'

declare namespace createTracker {
  /** CloudFront settings, in the original package's shape. */
  interface CloudFrontOptions {
    /** Distribution id. Required. */
    dist: string
    /** Access key id. With `secret_key`; when both are absent, the standard AWS credential chain is used. */
    access_key?: string
    /** Secret access key. */
    secret_key?: string
    /** Session token of temporary credentials. */
    session_token?: string
    /** Signing region (CloudFront is global; default `us-east-1` unless the environment names one). */
    region?: string
    /** A CloudFront-compatible endpoint URL (tests, proxies). */
    endpoint?: string
  }

  /** PEM text, as a string or a Buffer. */
  type Pem = string | Uint8Array

  /**
   * TLS certificates of a Redis connection: `ca`, the certificate authorities to trust instead of the public ones;
   * `cert` and `key`, a client certificate for a server that asks for one (both or neither); `rejectUnauthorized:
   * false`, not to check the server's certificate at all (encrypted, but anyone on the path can pose as the server).
   */
  type RedisTlsOptions = { ca?: Pem | Pem[]; rejectUnauthorized?: boolean } & ({ cert: Pem; key: Pem } | { cert?: undefined; key?: undefined })

  /** Redis settings: the original's forms plus `url`, `prefix` and `tls`. */
  type RedisOptions =
    | true
    | string
    | {
        /** `redis://[user:pass@]host:port[/db]` or `rediss://…`. */
        url?: string
        /** The original's form: a Redis URL. */
        REDIS_URL?: string
        /** The original's form: port (a number, or a string of digits), hostname and password. */
        port?: number | string
        hostname?: string
        host?: string
        /** An ACL user (Redis 6+, ElastiCache RBAC), with `password`; none: the `default` user. */
        username?: string
        /**
         * The password: with `port` and `hostname`, or with a `url` that has no credentials of its own (or names a user
         * without a password).
         */
        password?: string
        /** The database: with `port` and `hostname`, or with a `url` that names none (not with `sentinel`). */
        db?: number | string
        /** Key prefix, wrapped in a `{hash tag}`. Default `cfit`. */
        prefix?: string
        /**
         * TLS, as with a `rediss://` URL (a `redis://` URL or `port` and `hostname` are then connected to over TLS):
         * `true` trusts the public certificate authorities; an object gives certificates. `false` leaves it to the
         * URL's scheme.
         */
        tls?: boolean | RedisTlsOptions
        /** A Redis Cluster: `true` (the server named is one of its nodes), or URLs of nodes to learn it from. */
        cluster?: boolean | string[]
        /**
         * The master Redis Sentinel names: `name` as the Sentinels monitor it, `nodes` the Sentinels' URLs (their own
         * credentials in them), `db` its database. `password` is then the master's; give no `url`, host or port.
         */
        sentinel?: { name: string; nodes: string[]; db?: number }
      }

  /** Where log lines go. */
  interface Logger {
    info(message: string): void
    warn(message: string): void
    error(message: string): void
  }

  /** Options of a tracker. */
  interface Options {
    cf: CloudFrontOptions
    /** The Redis store. */
    redis?: RedisOptions
    /** `'memory://'` (or `'memory'`) for the native in-memory store, or a custom store object. */
    store?: 'memory://' | 'memory' | StoreLike
    /** `console` by default; `false` silences. */
    logger?: Logger | false
    /** Paths per CreateInvalidation request, 1 to 3000. Default 1000. */
    batchSize?: number
    /** Most paths one send may bill; more are collapsed into covering wildcards. */
    maxPaths?: number
    /** Flood guard: most URLs tracked one by one (default 1,000,000); past it, covered by wildcards. */
    maxTrackedUrls?: number
    /** How query strings are treated: `'keep'` (default), `'strip'` or `'wildcard'`. */
    queryStrings?: 'keep' | 'strip' | 'wildcard'
    /** Index document (e.g. `'index.html'`): directory URLs also invalidate their other forms. */
    indexDocument?: string
    /** How long a send keeps trying before it keeps the rest for later, in ms. Default 15 minutes. */
    sendTimeoutMs?: number
    /** Pause between polls of CloudFront while waiting, in ms. Default 10,000. */
    pollIntervalMs?: number
    /** Lease of a send's claim: a sender silent for longer is taken for dead and resumed, in ms. Default 60,000. */
    leaseMs?: number
    /** Longest time tracked URLs gather in memory before they are written together, in ms. Default 100. */
    flushIntervalMs?: number
    /** Per-call timeout of a custom store, in ms. Default 30,000. */
    storeTimeoutMs?: number
    /** Most distinct URLs buffered in memory between writes. Default 100,000. */
    bufferCapacity?: number
  }

  /** A custom store: the original package's contract. Methods may return a value, a Promise, or call back. */
  interface StoreLike {
    set(key: string, value: number, callback?: (err?: Error | null) => void): unknown
    getAllKeys(callback?: (err: Error | null, keys?: string[]) => void): unknown
    clearAll(callback?: (err?: Error | null) => void): unknown
    connect?(callback?: (err?: Error | null) => void): unknown
    disconnect?(callback?: (err?: Error | null) => void): unknown
    isConnected?(): boolean | Promise<boolean>
    del?(key: string, callback?: (err?: Error | null) => void): unknown
    setTTL?(key: string, ttlInSec: number, callback?: (err?: Error | null) => void): unknown
  }

  /** What happened to one CreateInvalidation batch. */
  interface BatchReport {
    /**
     * CloudFront's invalidation id (comma-separated when the batch had to be split; of a `Kept` batch, those of the
     * parts CloudFront accepted before the failure: the next send gets them back, not new ones).
     */
    id?: string
    /** The CallerReference it was (or will be) sent with (of each part, when split). */
    callerReference?: string
    /** `InProgress`, `Completed`, `Kept` (not sent, still tracked), `Rejected` (every path refused) or `DryRun`. */
    status: string
    /** Its paths. */
    paths: string[]
    /** True when resumed from an earlier send that failed or died. */
    resumed: boolean
    /** Attempts beyond the first. */
    retries: number
    /** Why it was kept. */
    error?: string
  }

  /** What a send did. */
  interface Report {
    /** Paths sent (or, in a dry run, that would be). */
    paths: number
    batches: BatchReport[]
    /** Tracked URLs kept for a later send. */
    kept: number
    /** Batches of an earlier send that failed or died, accepted by this one (one kept again counts in `kept`). */
    resumed: number
    /** Flood-guard wildcards sent (or, in a dry run, that would be). */
    overflow: string[]
    /** Paths CloudFront refused as invalid: dropped, so that they cannot block the rest. */
    rejected: string[]
    /** True when `maxPaths` collapsed paths into wildcards. */
    collapsed: boolean
    /** Paths billed by this send (not those of a resumed batch CloudFront had made before it, its answer lost). */
    billedPaths: number
    /** Paths billed this month through this store. */
    billedThisMonth: number
    /** Estimated price of this send in USD: 1,000 free paths a month, then $0.005 a path. */
    estimatedCostUsd: number
    dryRun: boolean
  }

  /** A rejected send: `report` tells what was sent and what was kept. */
  interface SendError extends Error {
    code: string
    report: Report
  }

  interface SendOptions {
    /** Poll until every invalidation completed (or `sendTimeoutMs` passes; rejects at once if CloudFront denies
     * reading their status). */
    wait?: boolean
    /** Report what would be sent; send and change nothing. */
    dryRun?: boolean
  }

  interface Distribution {
    id: string
    domainName: string
    /** Its origins' domain names. */
    origins: string[]
    /** The origin path of each of `origins`, in order (`'/production'`; `''` for none). */
    originPaths: string[]
    status: string
  }

  /**
   * Options of `invl.middleware()`. `Req` and `Res` are your framework's request and response types (Express's
   * `Request` and `Response`), inferred from `filter` and `ttl`.
   */
  interface MiddlewareOptions<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse> {
    /** Methods whose responses are tracked (case ignored). Default `['GET', 'HEAD']`. */
    methods?: string[]
    /** Statuses tracked: a list, or a predicate. Default: 2xx and 3xx. */
    statuses?: number[] | ((status: number) => boolean)
    /** Stop tracking a URL that answers 404 (and that `statuses` does not track). Default `true`. */
    removeOn404?: boolean
    /**
     * Only track (and untrack) requests that came through CloudFront: an `X-Amz-Cf-Id` header, a `Via` naming
     * CloudFront, or the User-Agent `Amazon CloudFront`. Default `false`.
     */
    onlyCloudFront?: boolean
    /**
     * How long the URL stays tracked, in seconds, or a function of the request and response (called once the
     * response has finished: read `req.originalUrl`, not `req.url`). `undefined`, `null` or `0`: until it is sent.
     */
    ttl?: number | ((req: Req, res: Res) => number | undefined | null)
    /** Called once the response has finished; `false` leaves the request alone (neither tracked nor untracked). */
    filter?: (req: Req, res: Res) => boolean
  }

  /** What `invl.middleware()` returns: calls `next()` at once; `next` may be omitted in a plain `http` server. */
  type TrackingMiddleware<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse> =
    (req: Req, res: Res, next?: (err?: unknown) => void) => void

  /** Tracks the URLs a server serves and invalidates them on CloudFront. */
  class Tracker {
    constructor(options: Options)
    /** Tracks a URL; resolves once it is in the store. `{ wildcard: true }` tracks a wildcard you ask for. */
    storeUrl(url: string, ttlInSec?: number | { ttl?: number; wildcard?: boolean }): Promise<void>
    /** Changes how long a tracked URL stays tracked (0: until sent); in order with storeUrl, resolves once written. */
    setUrlTTL(url: string, ttlInSec: number): Promise<void>
    /** Stops tracking a URL (`{ wildcard: true }`: a wildcard storeUrl tracked); in order with storeUrl, resolves once written. */
    removeUrl(url: string, options?: { wildcard?: boolean }): Promise<void>
    /**
     * What the next send will invalidate, sorted: tracked URLs and flood-guard wildcards (before the send adds a
     * directory's other forms or `?*`, or collapses them: a dry run's batches give the exact paths).
     */
    listUrls(): Promise<string[]>
    /** Writes buffered URLs to the store now. */
    flush(): Promise<void>
    /** Writes buffered URLs and closes connections; the next call reconnects. */
    disconnect(): Promise<void>
    /** The path a URL is tracked and sent as. */
    normalize(url: string): string
    /** Sends every tracked URL, forgets what CloudFront accepted, then disconnects. */
    sendInvalidation(options?: SendOptions): Promise<Report>
    /** Express/connect middleware tracking cacheable responses (GET/HEAD, 2xx/3xx, not `private`/`no-store`). */
    middleware<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse>(
      options?: MiddlewareOptions<Req, Res>
    ): TrackingMiddleware<Req, Res>
    /** The account's distributions. */
    listDistributions(): Promise<Distribution[]>
    /** The status of one invalidation. */
    invalidationStatus(id: string): Promise<string>
  }

  /** Base class of custom stores (the original package's). */
  class Store implements StoreLike {
    set(key: string, value: number, callback?: (err?: Error | null) => void): unknown
    getAllKeys(callback?: (err: Error | null, keys?: string[]) => void): unknown
    clearAll(callback?: (err?: Error | null) => void): unknown
  }

  /** One S3 event notification record (the fields used). */
  interface S3EventRecord {
    /** `ObjectCreated:Put`, `ObjectRemoved:Delete`, ...: only ObjectCreated:* and ObjectRemoved:* are used. */
    eventName: string
    s3: {
      bucket: { name: string }
      /** URL-encoded, with '+' for a space, as S3 sends it. */
      object: { key: string }
    }
  }

  /** An S3 event EventBridge delivers (`Object Created`, `Object Deleted`; the fields used). */
  interface S3BridgedEvent {
    source: 'aws.s3'
    'detail-type': string
    detail: { bucket: { name: string }; object: { key: string } }
  }

  /**
   * An S3 notification, an SNS or SQS event whose messages are S3 notifications or (SQS) EventBridge's S3 events, or
   * an EventBridge S3 event.
   */
  type S3Event =
    | { Records: Array<S3EventRecord | { Sns: { Message: string } } | { body: string }> }
    | S3BridgedEvent

  /** The tracker's `cf` settings, with `dist` optional: without it, the bucket's distribution is looked up. */
  type S3CloudFrontOptions = Omit<CloudFrontOptions, 'dist'> & { dist?: string }

  /** Options of `invalidateS3Event`: `cf`, plus the tracker's sending options. */
  interface S3Options extends Omit<Options, 'cf' | 'store' | 'redis' | 'logger'> {
    cf: S3CloudFrontOptions
    /** The tracker's logger: `console` by default (CloudWatch, in Lambda); `false` silences. */
    logger?: Logger | false
    /** Wait until CloudFront has completed the invalidations. */
    wait?: boolean
    /** Send nothing: the reports say what would be sent. */
    dryRun?: boolean
    /**
     * With `cf.dist`: the origin path of its origin on the bucket (`'/production'`), taken off the keys. Without
     * `cf.dist`, each distribution's is read from CloudFront.
     */
    originPath?: string
  }

  /** The report of one distribution's send. */
  interface S3Report extends Report {
    /** The distribution id. */
    distribution: string
    /** The buckets whose keys it received. */
    buckets: string[]
  }

  /** The rejection of a failed send: the first failure's `code` and message, and every distribution's report. */
  interface S3SendError extends Error {
    code: string
    /** The failed distribution's report. */
    report?: S3Report
    /** Every distribution's report, sent or kept. */
    reports: S3Report[]
  }

  /**
   * Invalidates the objects an S3 event names: each key becomes the path '/' + key, sent to `cf.dist` when given,
   * else to every distribution whose origin is the record's bucket. Resolves to one report per distribution (an
   * empty array when the event names no object). Rejects with code `ERR_CFIT_NO_DISTRIBUTION` before sending when a
   * bucket has no distribution, and with an `S3SendError` when a send failed.
   */
  function invalidateS3Event(event: S3Event, options: S3Options): Promise<S3Report[]>

  /**
   * Resolves to the id of the distribution whose origin is the S3 bucket `bucket` (the first listed if several).
   * Rejects with code `ERR_CFIT_NO_DISTRIBUTION` when there is none.
   */
  function findDistributionByOrigin(bucket: string, options: { cf: S3CloudFrontOptions }): Promise<string>

  /** `createTracker(options)`, for ES module default-import users. */
  const createTracker: (options: Options) => Tracker

  /** The longest URL a tracker takes, in characters (CloudFront's limit on a path). */
  const MAX_URL_LENGTH: number
}

/** `require('cf-invalidation-tracker')(options)`: the original factory. */
declare function createTracker(options: createTracker.Options): createTracker.Tracker

export = createTracker
