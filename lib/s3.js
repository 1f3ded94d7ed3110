'use strict'

// Invalidation driven by S3 events: the keys an S3 notification names become paths, sent to the distribution(s)
// whose origin is the bucket. Made for a Lambda function subscribed to the bucket's ObjectCreated/ObjectRemoved
// events, directly or through SNS or SQS, or to EventBridge's Object Created/Object Deleted events of the bucket.

const crypto = require('node:crypto')
const { argType, argValue } = require('./errors')
const { KNOWN_OPTIONS, knownOnly, optBoolean, squash, unknownOptions } = require('./options')

/** The distribution id the lookup tracker is built with: listing distributions does not use it. */
const LOOKUP_DIST = 'LOOKUP'

/** The names `invalidateS3Event` takes besides the tracker's. */
const S3_OPTIONS = ['wait', 'dryRun', 'originPath']

/** The options a misspelling of which could make a real, billed send (or one that does not wait) instead. */
const SEND_OPTIONS = ['dryRun', 'wait']

/** The edit distance (insertions, deletions, substitutions, swaps of neighbours) between `a` and `b`. */
function editDistance (a, b) {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0][j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

/**
 * Refuses an unknown option name that most likely means `dryRun` or `wait` (`dry_run`, `dryrun`, `DryRun`, `waitt`):
 * warned of and ignored like other unknown names, `dryrun: true` would send for real. The name, with case, `_` and
 * `-` ignored, is at most one edit from `wait` or two from `dryrun`.
 */
function refuseMisspeltSendOptions (options, known) {
  for (const k of Object.keys(options)) {
    if (known.includes(k)) continue
    const meant = SEND_OPTIONS.find((name) => editDistance(squash(k), squash(name)) <= (name === 'wait' ? 1 : 2))
    if (meant) throw argValue('options', `has no option ${k} (did you mean ${meant}? it is refused, not ignored, so that it never sends for real)`, options)
  }
}

/** Options not passed on to the trackers that send: S3's own, and those the sends set themselves. */
const OPTION_KEYS_NOT_PASSED = new Set(['cf', 'logger', 'store', 'redis', '_claimName', ...S3_OPTIONS])

function isObject (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function escapeRegExp (s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/**
 * True when `domain` (an origin's domain name) is the S3 endpoint of `bucket`: `BUCKET.s3.amazonaws.com`,
 * `BUCKET.s3.REGION.amazonaws.com`, `BUCKET.s3-REGION.amazonaws.com`, `BUCKET.s3.dualstack.REGION.amazonaws.com`,
 * `BUCKET.s3-website-REGION.amazonaws.com`, `BUCKET.s3-website.REGION.amazonaws.com`, and their `.amazonaws.com.cn`
 * forms. Case is ignored.
 */
function isBucketOrigin (domain, bucket) {
  if (typeof domain !== 'string' || typeof bucket !== 'string' || bucket === '') return false
  const re = new RegExp(
    `^${escapeRegExp(bucket)}\\.s3(?:-website)?(?:[.-](?:dualstack\\.)?[a-z0-9-]+)?\\.amazonaws\\.com(?:\\.cn)?\\.?$`,
    'i'
  )
  return re.test(domain)
}

function checkCf (options) {
  if (!isObject(options)) throw argType('options', 'of type object', options)
  if (!isObject(options.cf)) throw argType('options.cf', 'of type object', options.cf)
  return options.cf
}

function createTracker (options) {
  return require('..')(options)
}

/** Logs a warning to `logger` (console when not given; false silences); a logger that fails is ignored. */
function warn (logger, message) {
  const to = logger === undefined || logger === null ? console : logger
  try {
    if (to && typeof to.warn === 'function') to.warn(message)
  } catch {}
}

function noDistribution (bucket) {
  const err = new Error(`No CloudFront distribution has the S3 bucket "${bucket}" as its origin`)
  err.code = 'ERR_CFIT_NO_DISTRIBUTION'
  err.bucket = bucket
  return err
}

/**
 * Resolves to `{ bucket: [{ id, originPaths }] }` for every bucket of `buckets`: the distributions that have the
 * bucket as an origin, each with the origin paths of those origins ('' for none), from one listing of the account.
 */
async function distributionsByOrigin (buckets, cf) {
  const lookup = createTracker({ cf: { ...cf, dist: cf.dist || LOOKUP_DIST }, store: 'memory://', logger: false })
  const distributions = await lookup.listDistributions()
  const out = {}
  for (const bucket of buckets) {
    out[bucket] = []
    for (const d of distributions) {
      const originPaths = d.origins.flatMap((o, i) => isBucketOrigin(o, bucket) ? [d.originPaths[i] ?? ''] : [])
      if (originPaths.length > 0) out[bucket].push({ id: d.id, originPaths })
    }
  }
  return out
}

/**
 * Resolves to the id of the distribution whose origin is the S3 bucket `bucket` (the first one listed when several
 * are). `options.cf` has the tracker's `cf` shape; its `dist` is not needed. Rejects with code
 * `ERR_CFIT_NO_DISTRIBUTION` when no distribution serves the bucket.
 * @param {string} bucket
 * @param {{ cf: object }} options
 * @returns {Promise<string>}
 */
async function findDistributionByOrigin (bucket, options) {
  if (typeof bucket !== 'string' || bucket === '') throw argType('bucket', 'a non-empty string', bucket)
  const cf = checkCf(options)
  const [first] = (await distributionsByOrigin([bucket], cf))[bucket]
  if (!first) throw noDistribution(bucket)
  return first.id
}

/**
 * The S3 records of an event: S3 notification records, also when they arrive wrapped in SNS messages or SQS bodies.
 * S3's test event and records of other sources are skipped.
 */
function s3Records (event) {
  const out = []
  const visit = (value, depth) => {
    if (depth > 3 || !isObject(value)) return
    // An SNS notification delivered to SQS (the SQS body is SNS's envelope): the S3 notification is its Message.
    if (value.Type === 'Notification' && typeof value.Message === 'string') {
      visit(parseJson(value.Message), depth + 1)
      return
    }
    // An S3 event from EventBridge (a rule's target, or an SQS queue the rule feeds): one object, in its own shape.
    if (value.source === 'aws.s3' && isObject(value.detail)) {
      const record = bridgedRecord(value)
      if (record) out.push(record)
      return
    }
    if (!Array.isArray(value.Records)) return
    for (const record of value.Records) {
      if (!isObject(record)) continue
      if (isObject(record.s3)) out.push(record)
      else if (isObject(record.Sns) && typeof record.Sns.Message === 'string') visit(parseJson(record.Sns.Message), depth + 1)
      else if (typeof record.body === 'string') visit(parseJson(record.body), depth + 1)
    }
  }
  visit(event, 0)
  return out
}

/** EventBridge's names of the S3 events invalidated, as the notification's. */
const BRIDGED_KINDS = { 'Object Created': 'ObjectCreated', 'Object Deleted': 'ObjectRemoved' }

/**
 * An S3 event from EventBridge as a notification record (`bridged`, its key's encoding unknown), or undefined when it
 * names no object.
 */
function bridgedRecord (event) {
  const { bucket, object } = event.detail
  if (!isObject(bucket) || !isObject(object)) return undefined
  const kind = event['detail-type']
  return {
    eventName: `${BRIDGED_KINDS[kind] ?? kind}:EventBridge`,
    eventTime: event.time,
    bridged: true,
    s3: { bucket: { name: bucket.name }, object: { key: object.key, sequencer: object.sequencer } }
  }
}

function parseJson (text) {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Characters of a decoded key escaped before the tracker sees it: what it would take for URL syntax, or trim. */
const KEY_ESCAPED = /[%?#\u0000-\u0020\u007f]/g

/** An S3 object key as it is, decoded from the event's form ('+' for space, then percent-escapes). */
function decodeKey (key) {
  try {
    return decodeURIComponent(key.replace(/\+/g, ' '))
  } catch {
    return key
  }
}

/**
 * The key prefix an origin path (`/production`) stands for (`production/`): CloudFront puts the origin path before
 * the request's path, and S3 decodes the result into a key. '' for no origin path.
 */
function originKeyPrefix (originPath) {
  if (originPath === '' || originPath === '/') return ''
  let decoded
  try {
    decoded = decodeURIComponent(originPath)
  } catch {
    decoded = originPath
  }
  return decoded.replace(/^\/+/, '').replace(/\/*$/, '/')
}

/**
 * The path the object `key` (decoded) is served at through an origin with origin path `originPath`, or null when the
 * key is outside it: the key after the origin path, with '%', '?', '#', spaces and control characters escaped, so
 * that they stay part of the path (a URL's leading and trailing spaces and controls would be trimmed: the object
 * 'report.pdf ' is not 'report.pdf'). The tracker encodes the rest.
 */
function servedPath (key, originPath) {
  const prefix = originKeyPrefix(originPath)
  if (!key.startsWith(prefix)) return null
  const rest = key.slice(prefix.length)
  return '/' + rest.replace(KEY_ESCAPED, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
}

/** The path an S3 event's object key is served at through an origin without an origin path. */
function keyToPath (key) {
  return servedPath(decodeKey(key), '')
}

/** The origin path option of invalidateS3Event: '' for none, else '/' and no '/' at the end, as CloudFront has it. */
function optOriginPath (options, cf) {
  const v = options.originPath
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'string') throw argType('options.originPath', 'of type string', v)
  if (v !== '' && (!v.startsWith('/') || v.endsWith('/'))) {
    throw argValue('options.originPath', "must start with '/' and not end with one (as CloudFront has it), or be ''", v)
  }
  if (!cf.dist) {
    throw argValue('options.originPath', "applies with options.cf.dist only: without it, each distribution's origin path is read from CloudFront", v)
  }
  return v
}

/** A name for this event, the same each time it is delivered: a digest of its records. */
function eventName (event) {
  const identity = s3Records(event).map((r) => [
    r.eventName, r.eventTime, r.s3.bucket && r.s3.bucket.name, r.s3.object && r.s3.object.key,
    r.s3.object && r.s3.object.sequencer
  ])
  return 's3-' + crypto.createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 16)
}

/** `{ bucket: Set(decoded keys) }` for the ObjectCreated and ObjectRemoved records of `event`. */
function keysByBucket (event) {
  const out = new Map()
  for (const record of s3Records(event)) {
    const name = typeof record.eventName === 'string' ? record.eventName.replace(/^s3:/, '') : ''
    if (!/^Object(?:Created|Removed):/.test(name)) continue
    const bucket = record.s3.bucket && record.s3.bucket.name
    const key = record.s3.object && record.s3.object.key
    if (typeof bucket !== 'string' || bucket === '' || typeof key !== 'string' || key === '') continue
    if (!out.has(bucket)) out.set(bucket, new Set())
    out.get(bucket).add(decodeKey(key))
    // EventBridge's documentation does not say whether its keys are URL-encoded as notifications' are: a key that
    // reads otherwise decoded is sent as it is too (one more path, for keys with '+' or '%' only).
    if (record.bridged) out.get(bucket).add(key)
  }
  return out
}

/**
 * The tracker options of `invalidateS3Event`'s sends, checked once, before anything is looked up or sent: a bad value
 * is refused then (by a tracker made and closed at once), and a name nothing takes is warned of once and left out.
 */
async function checkedTrackerOptions (options, cf) {
  const warnings = [...unknownOptions(options, 'options', [...KNOWN_OPTIONS.options, ...S3_OPTIONS]),
    ...unknownOptions(cf, 'options.cf')]
  for (const w of warnings) warn(options.logger, w)
  const passed = {}
  for (const [k, v] of Object.entries(knownOnly(options, 'options'))) if (!OPTION_KEYS_NOT_PASSED.has(k)) passed[k] = v
  const check = createTracker({ ...passed, cf: { ...knownOnly(cf, 'options.cf'), dist: cf.dist || LOOKUP_DIST }, store: 'memory://', logger: false })
  await check.disconnect()
  return passed
}

/**
 * Invalidates the objects an S3 event names (records `ObjectCreated:*` and `ObjectRemoved:*`; plain, or wrapped in
 * SNS/SQS records). Each key becomes the path it is served at, sent to `options.cf.dist` when given, else to every
 * distribution whose origin is the record's bucket: '/' + the key, less the origin's origin path (`originPath` with
 * `cf.dist`, else read from CloudFront; a key outside it is not served there). Other tracker options (`batchSize`,
 * `queryStrings`, `indexDocument`, `sendTimeoutMs`, ...) apply to the send; `wait: true` waits until CloudFront completed,
 * `dryRun: true` sends nothing (the reports say what would be sent); `logger`
 * is the tracker's (console by default, which in Lambda is CloudWatch).
 *
 * Resolves to an array with one report per distribution, in the tracker's report shape plus `distribution` (its id)
 * and `buckets` (the buckets whose keys it received); an empty array when the event names no object. Rejects with
 * code `ERR_CFIT_NO_DISTRIBUTION` (before sending anything) when a bucket has no distribution, or with the first
 * send's error when a send failed; that error carries `reports`, every distribution's report, so the caller (or
 * Lambda's retry) can tell what went through.
 * @param {object} event an S3 notification (`{ Records: [...] }`)
 * @param {{ cf: object, logger?: object | false, wait?: boolean, originPath?: string }} options
 * @returns {Promise<Array<object>>}
 */
async function invalidateS3Event (event, options) {
  if (!isObject(event)) throw argType('event', 'of type object', event)
  const cf = checkCf(options)
  refuseMisspeltSendOptions(options, [...KNOWN_OPTIONS.options, ...S3_OPTIONS])
  const { logger } = options
  const wait = optBoolean(options, 'wait', false)
  const dryRun = optBoolean(options, 'dryRun', false)
  const trackerOptions = await checkedTrackerOptions(options, cf)
  const originPath = optOriginPath(options, cf)
  const byBucket = keysByBucket(event)
  if (byBucket.size === 0) {
    // Not an S3 event at all (a wrong trigger) must not pass for a quiet success.
    if (s3Records(event).length === 0) warn(logger, 'cf-invalidation-tracker: the event holds no S3 event (a notification record, directly or through SNS or SQS, or an EventBridge event of aws.s3); nothing to invalidate')
    return []
  }
  const buckets = [...byBucket.keys()]
  const dists = cf.dist
    ? Object.fromEntries(buckets.map((b) => [b, [{ id: cf.dist, originPaths: [originPath ?? ''] }]]))
    : await distributionsByOrigin(buckets, cf)

  // distribution id -> { paths, buckets }: each key at its path through each of the distribution's origins on its
  // bucket (none for an origin whose origin path the key is outside of).
  const plan = new Map()
  for (const bucket of buckets) {
    if (dists[bucket].length === 0) throw noDistribution(bucket)
    for (const { id, originPaths } of dists[bucket]) {
      if (!plan.has(id)) plan.set(id, { paths: new Set(), buckets: [] })
      const entry = plan.get(id)
      entry.buckets.push(bucket)
      for (const key of byBucket.get(bucket)) {
        for (const origin of originPaths) {
          const p = servedPath(key, origin)
          if (p !== null) entry.paths.add(p)
        }
      }
    }
  }

  // Lambda delivers an event again when its handler failed: the same event makes the same claims, hence the same
  // CallerReferences, so CloudFront returns what it accepted the first time instead of billing it again.
  const claimName = eventName(event)
  const sends = [...plan].map(async ([id, { paths, buckets }]) => {
    const tracker = createTracker({ ...trackerOptions, cf: { ...knownOnly(cf, 'options.cf'), dist: id }, store: 'memory://', logger, _claimName: claimName })
    for (const p of paths) tracker.storeUrl(p)
    try {
      const report = await tracker.sendInvalidation({ wait, dryRun })
      return { ...report, distribution: id, buckets }
    } catch (err) {
      if (err.report) err.report = { ...err.report, distribution: id, buckets }
      throw err
    }
  })
  const settled = await Promise.allSettled(sends)
  const failed = settled.find((s) => s.status === 'rejected')
  if (failed) {
    const err = failed.reason
    err.reports = settled.map((s) => (s.status === 'fulfilled' ? s.value : s.reason && s.reason.report)).filter(Boolean)
    throw err
  }
  return settled.map((s) => s.value)
}

module.exports = { invalidateS3Event, findDistributionByOrigin, isBucketOrigin, keyToPath, s3Records }
