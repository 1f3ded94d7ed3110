'use strict'

// Invalidation driven by S3 events: the keys an S3 notification names become paths, sent to the distribution(s)
// whose origin is the bucket. Made for a Lambda function subscribed to the bucket's ObjectCreated/ObjectRemoved
// events, directly or through SNS or SQS.

const crypto = require('node:crypto')
const { argType } = require('./errors')

/** The distribution id the lookup tracker is built with: listing distributions does not use it. */
const LOOKUP_DIST = 'LOOKUP'

const OPTION_KEYS_NOT_PASSED = new Set(['cf', 'logger', 'wait', 'store', 'redis', '_claimName'])

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

function noDistribution (bucket) {
  const err = new Error(`No CloudFront distribution has the S3 bucket "${bucket}" as its origin`)
  err.code = 'ERR_CFIT_NO_DISTRIBUTION'
  err.bucket = bucket
  return err
}

/** Resolves to `{ bucket: [distribution ids] }` for every bucket of `buckets`, from one listing of the account. */
async function distributionsByOrigin (buckets, cf) {
  const lookup = createTracker({ cf: { ...cf, dist: cf.dist || LOOKUP_DIST }, store: 'memory://', logger: false })
  const distributions = await lookup.listDistributions()
  const out = {}
  for (const bucket of buckets) {
    out[bucket] = distributions.filter((d) => d.origins.some((o) => isBucketOrigin(o, bucket))).map((d) => d.id)
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
  const [id] = (await distributionsByOrigin([bucket], cf))[bucket]
  if (!id) throw noDistribution(bucket)
  return id
}

/**
 * The S3 records of an event: S3 notification records, also when they arrive wrapped in SNS messages or SQS bodies.
 * S3's test event and records of other sources are skipped.
 */
function s3Records (event) {
  const out = []
  const visit = (value, depth) => {
    if (depth > 3 || !isObject(value) || !Array.isArray(value.Records)) return
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

function parseJson (text) {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Characters of a decoded key escaped before the tracker sees it: what it would take for URL syntax, or trim. */
const KEY_ESCAPED = /[%?#\u0000-\u0020\u007f]/g

/**
 * The path an S3 object key is served at: '/' + the key, decoded from the event's form ('+' for space, then
 * percent-escapes), with '%', '?', '#', spaces and control characters escaped, so that they stay part of the path
 * (a URL's leading and trailing spaces and controls would be trimmed: the object 'report.pdf ' is not 'report.pdf').
 * The tracker encodes the rest.
 */
function keyToPath (key) {
  let decoded
  try {
    decoded = decodeURIComponent(key.replace(/\+/g, ' '))
  } catch {
    decoded = key
  }
  return '/' + decoded.replace(KEY_ESCAPED, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
}

/** A name for this event, the same each time it is delivered: a digest of its records. */
function eventName (event) {
  const identity = s3Records(event).map((r) => [
    r.eventName, r.eventTime, r.s3.bucket && r.s3.bucket.name, r.s3.object && r.s3.object.key,
    r.s3.object && r.s3.object.sequencer
  ])
  return 's3-' + crypto.createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 16)
}

/** `{ bucket: Set(paths) }` for the ObjectCreated and ObjectRemoved records of `event`. */
function pathsByBucket (event) {
  const out = new Map()
  for (const record of s3Records(event)) {
    const name = typeof record.eventName === 'string' ? record.eventName.replace(/^s3:/, '') : ''
    if (!/^Object(?:Created|Removed):/.test(name)) continue
    const bucket = record.s3.bucket && record.s3.bucket.name
    const key = record.s3.object && record.s3.object.key
    if (typeof bucket !== 'string' || bucket === '' || typeof key !== 'string' || key === '') continue
    if (!out.has(bucket)) out.set(bucket, new Set())
    out.get(bucket).add(keyToPath(key))
  }
  return out
}

/**
 * Invalidates the objects an S3 event names (records `ObjectCreated:*` and `ObjectRemoved:*`; plain, or wrapped in
 * SNS/SQS records). Each key becomes the path '/' + key, sent to `options.cf.dist` when given, else to every
 * distribution whose origin is the record's bucket. Other tracker options (`batchSize`, `queryStrings`,
 * `indexDocument`, `sendTimeoutMs`, ...) apply to the send; `wait: true` waits until CloudFront completed; `logger`
 * is the tracker's (console by default, which in Lambda is CloudWatch).
 *
 * Resolves to an array with one report per distribution, in the tracker's report shape plus `distribution` (its id)
 * and `buckets` (the buckets whose keys it received); an empty array when the event names no object. Rejects with
 * code `ERR_CFIT_NO_DISTRIBUTION` (before sending anything) when a bucket has no distribution, or with the first
 * send's error when a send failed; that error carries `reports`, every distribution's report, so the caller (or
 * Lambda's retry) can tell what went through.
 * @param {object} event an S3 notification (`{ Records: [...] }`)
 * @param {{ cf: object, logger?: object | false, wait?: boolean }} options
 * @returns {Promise<Array<object>>}
 */
async function invalidateS3Event (event, options) {
  if (!isObject(event)) throw argType('event', 'of type object', event)
  const cf = checkCf(options)
  const { logger, wait = false } = options
  const trackerOptions = {}
  for (const [k, v] of Object.entries(options)) if (!OPTION_KEYS_NOT_PASSED.has(k)) trackerOptions[k] = v

  const byBucket = pathsByBucket(event)
  if (byBucket.size === 0) return []
  const buckets = [...byBucket.keys()]
  const dists = cf.dist ? Object.fromEntries(buckets.map((b) => [b, [cf.dist]])) : await distributionsByOrigin(buckets, cf)

  // distribution id -> { paths, buckets }
  const plan = new Map()
  for (const bucket of buckets) {
    if (dists[bucket].length === 0) throw noDistribution(bucket)
    for (const id of dists[bucket]) {
      if (!plan.has(id)) plan.set(id, { paths: new Set(), buckets: [] })
      const entry = plan.get(id)
      entry.buckets.push(bucket)
      for (const p of byBucket.get(bucket)) entry.paths.add(p)
    }
  }

  // Lambda delivers an event again when its handler failed: the same event makes the same claims, hence the same
  // CallerReferences, so CloudFront returns what it accepted the first time instead of billing it again.
  const claimName = eventName(event)
  const sends = [...plan].map(async ([id, { paths, buckets }]) => {
    const tracker = createTracker({ ...trackerOptions, cf: { ...cf, dist: id }, store: 'memory://', logger, _claimName: claimName })
    for (const p of paths) tracker.storeUrl(p)
    try {
      const report = await tracker.sendInvalidation({ wait })
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
