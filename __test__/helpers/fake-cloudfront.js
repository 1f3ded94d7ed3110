'use strict'

// A CloudFront-compatible HTTP server for tests, with injectable faults.
//
// It speaks the REST-XML wire format of CloudFront API version 2020-05-31 for
// CreateInvalidation, GetInvalidation, ListInvalidations and ListDistributions,
// applies CloudFront's rules (path syntax, Quantity, CallerReference reuse,
// in-progress path and wildcard limits) and can be told to fail in the ways
// CloudFront and the network fail. Point the AWS SDK at `endpoint`.

const http = require('node:http')
const crypto = require('node:crypto')

const API_VERSION = '2020-05-31'
const NAMESPACE = `http://cloudfront.amazonaws.com/doc/${API_VERSION}/`
const PUBLIC_HOST = 'https://cloudfront.amazonaws.com'
const ACCOUNT_ID = '123456789012'
const MAX_PATH_LENGTH = 4000
const DEFAULT_MAX_ITEMS = 100
const DEFAULT_SLOW_MS = 1000

/** The HTTP status and error of each fault kind that answers with an error. */
const ERROR_FAULTS = {
  503: { status: 503, type: 'Receiver', code: 'ServiceUnavailable', message: 'CloudFront is unavailable. Try again later.' },
  throttle: { status: 400, type: 'Sender', code: 'Throttling', message: 'Rate exceeded' },
  tooMany: {
    status: 400,
    type: 'Sender',
    code: 'TooManyInvalidationsInProgress',
    message: 'Processing your request will cause you to exceed the maximum number of in-progress invalidations.',
  },
  batchTooLarge: { status: 413, type: 'Sender', code: 'BatchTooLarge', message: 'Invalidation batch specified is too large.' },
  accessDenied: {
    status: 403,
    type: 'Sender',
    code: 'AccessDenied',
    message: 'User is not authorized to perform this action on the resource.',
  },
  noSuchDistribution: {
    status: 404,
    type: 'Sender',
    code: 'NoSuchDistribution',
    message: 'The specified distribution does not exist.',
  },
}

const FAULT_KINDS = new Set([...Object.keys(ERROR_FAULTS), 'reset', 'slow', 'acceptThenReset'])

const OPERATIONS = new Set(['CreateInvalidation', 'GetInvalidation', 'ListInvalidations', 'ListDistributions'])

/** An error CloudFront answers with: HTTP status, `<Type>`, `<Code>`, `<Message>`. */
class CloudFrontError extends Error {
  constructor(status, code, message, type = 'Sender') {
    super(message)
    this.status = status
    this.code = code
    this.type = type
  }
}

const noSuchDistribution = () =>
  new CloudFrontError(404, 'NoSuchDistribution', 'The specified distribution does not exist.')

const malformed = (member) =>
  new CloudFrontError(
    400,
    'MalformedXML',
    `1 validation error detected: Value null at '${member}' failed to satisfy constraint: Member must not be null`,
  )

// ---------------------------------------------------------------------------
// XML

/**
 * Parses an XML document into `{ name, attributes, children, text }` elements
 * (`name` without namespace prefix). Enough XML for the CloudFront API:
 * elements, attributes, text, entities, CDATA, comments, declarations.
 * Throws SyntaxError on anything malformed.
 */
function parseXml(source) {
  const document = { name: '#document', attributes: {}, children: [], text: '' }
  const stack = [document]
  const tag = /<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[A-Za-z_][\w.:-]*\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>/y
  const attribute = /([A-Za-z_][\w.:-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g
  let at = 0
  const skipTo = (marker, from) => {
    const end = source.indexOf(marker, from)
    if (end === -1) throw new SyntaxError(`unterminated markup at ${from}`)
    return end + marker.length
  }
  while (at < source.length) {
    const open = source.indexOf('<', at)
    const textEnd = open === -1 ? source.length : open
    if (textEnd > at) {
      const text = decodeEntities(source.slice(at, textEnd))
      if (stack.length === 1) {
        if (text.trim() !== '') throw new SyntaxError('text outside the root element')
      } else {
        stack[stack.length - 1].text += text
      }
    }
    if (open === -1) break
    if (source.startsWith('<?', open)) {
      at = skipTo('?>', open)
    } else if (source.startsWith('<!--', open)) {
      at = skipTo('-->', open)
    } else if (source.startsWith('<![CDATA[', open)) {
      if (stack.length === 1) throw new SyntaxError('CDATA outside the root element')
      at = skipTo(']]>', open)
      stack[stack.length - 1].text += source.slice(open + 9, at - 3)
    } else if (source.startsWith('<!', open)) {
      throw new SyntaxError('document type declarations are not accepted')
    } else {
      tag.lastIndex = open
      const match = tag.exec(source)
      if (!match) throw new SyntaxError(`malformed tag at ${open}`)
      const [whole, closing, qualified, attributeText, selfClosing] = match
      const name = qualified.slice(qualified.indexOf(':') + 1)
      at = open + whole.length
      if (closing) {
        const current = stack.pop()
        if (stack.length === 0 || current.name !== name || attributeText || selfClosing) {
          throw new SyntaxError(`unexpected </${qualified}> at ${open}`)
        }
        continue
      }
      if (stack.length === 1 && document.children.length > 0) throw new SyntaxError('more than one root element')
      const attributes = {}
      for (const [, key, double, single] of attributeText.matchAll(attribute)) {
        attributes[key] = decodeEntities(double ?? single)
      }
      const element = { name, attributes, children: [], text: '' }
      stack[stack.length - 1].children.push(element)
      if (!selfClosing) stack.push(element)
    }
  }
  if (stack.length !== 1) throw new SyntaxError(`unclosed <${stack[stack.length - 1].name}>`)
  if (document.children.length !== 1) throw new SyntaxError('no root element')
  return document.children[0]
}

const NAMED_ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

function decodeEntities(text) {
  return text.replace(/&(#x[0-9A-Fa-f]+|#[0-9]+|[A-Za-z]+);/g, (whole, entity) => {
    if (entity[0] === '#') {
      const code = entity[1] === 'x' ? parseInt(entity.slice(2), 16) : parseInt(entity.slice(1), 10)
      if (code > 0x10ffff) throw new SyntaxError(`bad character reference ${whole}`)
      return String.fromCodePoint(code)
    }
    if (!(entity in NAMED_ENTITIES)) throw new SyntaxError(`unknown entity ${whole}`)
    return NAMED_ENTITIES[entity]
  })
}

const escapeXml = (value) =>
  String(value).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c],
  )

/** `el('A', el('B', 'x'))` -> `<A><B>x</B></A>`; strings are escaped, nested elements are not. */
const el = (name, ...content) =>
  `<${name}>${content.map((part) => (part instanceof Markup ? part.xml : escapeXml(part))).join('')}</${name}>`

class Markup {
  constructor(xml) {
    this.xml = xml
  }
}
const tagged = (name, ...content) => new Markup(el(name, ...content))
const many = (parts) => new Markup(parts.map((part) => part.xml).join(''))

const xmlDocument = (root) => `<?xml version="1.0" encoding="UTF-8"?>\n${root.xml.replace(/^<(\w+)>/, `<$1 xmlns="${NAMESPACE}">`)}`

const child = (element, name) => element.children.find((c) => c.name === name)

// ---------------------------------------------------------------------------
// Server

/**
 * Starts a fake CloudFront on 127.0.0.1 and a free port.
 *
 * @param {object} [options]
 * @param {number} [options.inProgressMs=0] how long an invalidation stays InProgress before it is Completed
 * @param {number} [options.maxInProgressPaths=3000] in-progress non-wildcard paths allowed per distribution
 * @param {number} [options.maxInProgressWildcards=15] in-progress wildcard paths (ending in '*') allowed per distribution
 * @param {Array<string|{id: string, originDomain?: string, domainName?: string}>} [options.distributions]
 */
async function startFakeCloudFront({
  inProgressMs = 0,
  maxInProgressPaths = 3000,
  maxInProgressWildcards = 15,
  distributions = ['EDFDVBD6EXAMPLE'],
} = {}) {
  const distributionList = distributions.map(toDistribution)
  const byId = new Map(distributionList.map((d) => [d.id, d]))
  if (byId.size !== distributionList.length) throw new RangeError('distribution ids must be unique')

  let faults = []
  /** Paths this CloudFront refuses as invalid, beyond its own syntax rules (a predicate, or null). */
  let refusePath = null
  let requests = []
  const timers = new Set()

  const statusOf = (invalidation, now = Date.now()) =>
    invalidation.forcedComplete || now - invalidation.createdAt >= inProgressMs ? 'Completed' : 'InProgress'

  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')))
  })

  function takeFault(op) {
    const index = faults.findIndex((f) => f.op === op)
    if (index === -1) return undefined
    const fault = faults[index]
    if (fault.after > 0) {
      // Let this many requests of the operation through before the fault applies.
      fault.after -= 1
      return undefined
    }
    fault.remaining -= 1
    if (fault.remaining === 0) faults.splice(index, 1)
    return fault
  }

  function later(ms, fn) {
    const timer = setTimeout(() => {
      timers.delete(timer)
      fn()
    }, ms)
    timers.add(timer)
  }

  function handle(req, res, body) {
    const url = new URL(req.url, 'http://localhost')
    const route = routeOf(req.method, url.pathname)
    const batch = route.op === 'CreateInvalidation' ? peekBatch(body) : {}
    const record = {
      op: route.op,
      method: req.method,
      path: req.url,
      ...(route.distributionId !== undefined && { distributionId: route.distributionId }),
      ...(batch.callerReference !== undefined && { callerReference: batch.callerReference }),
      ...(batch.paths !== undefined && { paths: batch.paths }),
      at: Date.now(),
      answeredWith: undefined,
    }
    requests.push(record)

    const fault = takeFault(route.op)
    if (fault) record.fault = fault.kind
    const act = () => {
      if (!fault || fault.kind === 'slow') return respond(req, res, record, () => perform(route, url, body))
      if (fault.kind === 'reset') return drop(res, record)
      if (fault.kind === 'acceptThenReset') {
        try {
          perform(route, url, body)
        } catch {
          // The answer is never sent, whatever it would have been.
        }
        return drop(res, record)
      }
      const { status, type, code, message } = ERROR_FAULTS[fault.kind]
      return respond(req, res, record, () => {
        throw new CloudFrontError(status, code, message, type)
      })
    }
    const delay = fault?.delayMs ?? (fault?.kind === 'slow' ? DEFAULT_SLOW_MS : 0)
    if (delay > 0) later(delay, act)
    else act()
  }

  function respond(req, res, record, produce) {
    const requestId = crypto.randomUUID()
    let status
    let headers = {}
    let xml
    try {
      ;({ status, headers = {}, xml } = produce())
    } catch (caught) {
      const error =
        caught instanceof CloudFrontError
          ? caught
          : new CloudFrontError(500, 'InternalError', String(caught?.message ?? caught), 'Receiver')
      status = error.status
      record.errorCode = error.code
      xml =
        `<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="${NAMESPACE}">` +
        el('Error', tagged('Type', error.type), tagged('Code', error.code), tagged('Message', error.message)) +
        el('RequestId', requestId) +
        '</ErrorResponse>'
    }
    record.answeredWith = status
    if (res.destroyed) return
    const payload = Buffer.from(xml, 'utf8')
    res.writeHead(status, {
      'Content-Type': 'text/xml',
      'Content-Length': payload.length,
      'x-amzn-RequestId': requestId,
      ...headers,
    })
    res.end(payload)
  }

  function drop(res, record) {
    record.answeredWith = 'reset'
    const socket = res.socket
    if (!socket || socket.destroyed) return
    if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy()
    else socket.destroy()
  }

  function perform(route, url, body) {
    switch (route.op) {
      case 'CreateInvalidation':
        return createInvalidation(distribution(route.distributionId), body)
      case 'GetInvalidation':
        return getInvalidation(distribution(route.distributionId), route.invalidationId)
      case 'ListInvalidations':
        return listInvalidations(distribution(route.distributionId), url.searchParams)
      case 'ListDistributions':
        return listDistributions(url.searchParams)
      default:
        throw new CloudFrontError(404, 'UnknownOperationException', `No operation at ${url.pathname}`)
    }
  }

  function distribution(id) {
    const found = byId.get(id)
    if (!found) throw noSuchDistribution()
    return found
  }

  function createInvalidation(dist, body) {
    const { callerReference, paths } = parseBatch(body)
    if (refusePath && paths.some(refusePath)) {
      throw new CloudFrontError(400, 'InvalidArgument', 'Your request contains one or more invalid invalidation paths.')
    }
    const previous = dist.byCallerReference.get(callerReference)
    if (previous) {
      if (!samePaths(previous.paths, paths)) {
        throw new CloudFrontError(
          400,
          'InvalidArgument',
          'Your request contains a caller reference that was used for a previous invalidation batch for the same distribution.',
        )
      }
      return invalidationAnswer(dist, previous, 201)
    }

    const now = Date.now()
    let wildcards = 0
    let plain = 0
    for (const inv of dist.invalidations) {
      if (statusOf(inv, now) !== 'InProgress') continue
      wildcards += inv.wildcards
      plain += inv.paths.length - inv.wildcards
    }
    const newWildcards = paths.filter(isWildcard).length
    if (wildcards + newWildcards > maxInProgressWildcards) {
      throw new CloudFrontError(
        400,
        'TooManyInvalidationsInProgress',
        'Processing your request will cause you to exceed the maximum number of in-progress wildcard invalidations.',
      )
    }
    if (plain + paths.length - newWildcards > maxInProgressPaths) {
      throw new CloudFrontError(
        400,
        'TooManyInvalidationsInProgress',
        'Processing your request will cause you to exceed the maximum number of in-progress invalidations.',
      )
    }

    const invalidation = {
      id: newId('I', 13),
      callerReference,
      paths,
      wildcards: newWildcards,
      createdAt: now,
      forcedComplete: false,
    }
    dist.invalidations.push(invalidation)
    dist.byCallerReference.set(callerReference, invalidation)
    return invalidationAnswer(dist, invalidation, 201)
  }

  function invalidationAnswer(dist, invalidation, status) {
    const xml = xmlDocument(
      tagged(
        'Invalidation',
        tagged('Id', invalidation.id),
        tagged('Status', statusOf(invalidation)),
        tagged('CreateTime', new Date(invalidation.createdAt).toISOString()),
        tagged(
          'InvalidationBatch',
          tagged(
            'Paths',
            tagged('Quantity', invalidation.paths.length),
            tagged('Items', many(invalidation.paths.map((p) => tagged('Path', p)))),
          ),
          tagged('CallerReference', invalidation.callerReference),
        ),
      ),
    )
    const headers =
      status === 201
        ? { Location: `${PUBLIC_HOST}/${API_VERSION}/distribution/${dist.id}/invalidation/${invalidation.id}` }
        : {}
    return { status, headers, xml }
  }

  function getInvalidation(dist, id) {
    const invalidation = dist.invalidations.find((inv) => inv.id === id)
    if (!invalidation) {
      throw new CloudFrontError(404, 'NoSuchInvalidation', 'The specified invalidation does not exist.')
    }
    return invalidationAnswer(dist, invalidation, 200)
  }

  function listInvalidations(dist, query) {
    // Newest first, as CloudFront lists them; the marker is the last id of the previous page.
    const newestFirst = [...dist.invalidations].reverse()
    const page = paginate(newestFirst, (inv) => inv.id, query)
    const now = Date.now()
    const items = page.items.map((inv) =>
      tagged(
        'InvalidationSummary',
        tagged('Id', inv.id),
        tagged('CreateTime', new Date(inv.createdAt).toISOString()),
        tagged('Status', statusOf(inv, now)),
      ),
    )
    return { status: 200, xml: xmlDocument(tagged('InvalidationList', ...page.envelope(items))) }
  }

  function listDistributions(query) {
    const page = paginate(distributionList, (d) => d.id, query)
    return {
      status: 200,
      xml: xmlDocument(tagged('DistributionList', ...page.envelope(page.items.map(distributionSummary)))),
    }
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address()

  return {
    /** Base URL to give the SDK as its endpoint. */
    endpoint: `http://127.0.0.1:${port}`,

    /**
     * Queues `times` faults of `kind` for operation `op`; an operation consumes its faults in the order queued.
     * `delayMs` delays the fault (for 'slow', the normal answer; default 1000 ms).
     */
    fail(kind, { times = 1, op = 'CreateInvalidation', delayMs, after = 0 } = {}) {
      const name = typeof kind === 'number' ? String(kind) : kind
      if (!FAULT_KINDS.has(name)) throw new TypeError(`unknown fault kind: ${kind}`)
      if (!OPERATIONS.has(op)) throw new TypeError(`unknown operation: ${op}`)
      if (!Number.isInteger(times) || times < 1) throw new RangeError('times must be a positive integer')
      if (delayMs !== undefined && !(Number.isFinite(delayMs) && delayMs >= 0)) {
        throw new RangeError('delayMs must be a non-negative number')
      }
      if (!Number.isInteger(after) || after < 0) throw new RangeError('after must be a non-negative integer')
      faults.push({ kind: name, op, remaining: times, delayMs, after })
    },

    /** Every request received, in arrival order. */
    get requests() {
      return requests
    },

    /** Invalidations created for `distId` (every distribution when omitted), oldest first. */
    invalidations(distId) {
      const now = Date.now()
      return selected(distId).flatMap((d) =>
        d.invalidations.map((inv) => ({
          id: inv.id,
          distributionId: d.id,
          callerReference: inv.callerReference,
          paths: [...inv.paths],
          status: statusOf(inv, now),
          createTime: new Date(inv.createdAt),
        })),
      )
    },

    /** Every path of every invalidation created for `distId` (every distribution when omitted), duplicates kept. */
    pathsReceived(distId) {
      return selected(distId).flatMap((d) => d.invalidations.flatMap((inv) => inv.paths))
    },

    /** Refuses, as InvalidArgument, every CreateInvalidation holding a path for which `predicate` is true. */
    refusePaths(predicate) {
      refusePath = predicate
    },

    /** Marks every invalidation Completed now, freeing the in-progress limits. */
    completeAll() {
      for (const d of distributionList) for (const inv of d.invalidations) inv.forcedComplete = true
    },

    /** Forgets queued faults, recorded requests and created invalidations. */
    reset() {
      faults = []
      refusePath = null
      requests = []
      for (const d of distributionList) {
        d.invalidations = []
        d.byCallerReference.clear()
      }
    },

    /** Closes the server and every connection to it. */
    async stop() {
      for (const timer of timers) clearTimeout(timer)
      timers.clear()
      const closed = new Promise((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      await closed
    },
  }

  function selected(distId) {
    if (distId === undefined) return distributionList
    const found = byId.get(distId)
    return found ? [found] : []
  }
}

function toDistribution(entry) {
  const config = typeof entry === 'string' ? { id: entry } : entry
  if (!config || typeof config.id !== 'string' || config.id === '') {
    throw new TypeError('a distribution is an id string or { id, originDomain?, domainName? }')
  }
  const hash = crypto.createHash('sha256').update(config.id).digest('hex')
  return {
    id: config.id,
    originDomain: config.originDomain ?? 'origin.example.com',
    domainName: config.domainName ?? `d${hash.slice(0, 13)}.cloudfront.net`,
    lastModified: new Date(),
    invalidations: [],
    byCallerReference: new Map(),
  }
}

function distributionSummary(d) {
  const originId = `origin-${d.originDomain}`
  return tagged(
    'DistributionSummary',
    tagged('Id', d.id),
    tagged('ARN', `arn:aws:cloudfront::${ACCOUNT_ID}:distribution/${d.id}`),
    tagged('Status', 'Deployed'),
    tagged('LastModifiedTime', d.lastModified.toISOString()),
    tagged('DomainName', d.domainName),
    tagged('Aliases', tagged('Quantity', 0)),
    tagged(
      'Origins',
      tagged('Quantity', 1),
      tagged(
        'Items',
        tagged(
          'Origin',
          tagged('Id', originId),
          tagged('DomainName', d.originDomain),
          tagged('OriginPath', ''),
          tagged('CustomHeaders', tagged('Quantity', 0)),
          tagged(
            'CustomOriginConfig',
            tagged('HTTPPort', 80),
            tagged('HTTPSPort', 443),
            tagged('OriginProtocolPolicy', 'https-only'),
          ),
          tagged('ConnectionAttempts', 3),
          tagged('ConnectionTimeout', 10),
        ),
      ),
    ),
    tagged('OriginGroups', tagged('Quantity', 0)),
    tagged(
      'DefaultCacheBehavior',
      tagged('TargetOriginId', originId),
      tagged('ViewerProtocolPolicy', 'redirect-to-https'),
      tagged('Compress', 'true'),
      tagged('CachePolicyId', '658327ea-f89d-4fab-a63d-7e88639e58f6'),
    ),
    tagged('CacheBehaviors', tagged('Quantity', 0)),
    tagged('CustomErrorResponses', tagged('Quantity', 0)),
    tagged('Comment', ''),
    tagged('PriceClass', 'PriceClass_All'),
    tagged('Enabled', 'true'),
    tagged(
      'ViewerCertificate',
      tagged('CloudFrontDefaultCertificate', 'true'),
      tagged('SSLSupportMethod', 'vip'),
      tagged('MinimumProtocolVersion', 'TLSv1'),
      tagged('CertificateSource', 'cloudfront'),
    ),
    tagged('Restrictions', tagged('GeoRestriction', tagged('RestrictionType', 'none'), tagged('Quantity', 0))),
    tagged('WebACLId', ''),
    tagged('HttpVersion', 'http2'),
    tagged('IsIPV6Enabled', 'true'),
    tagged('Staging', 'false'),
  )
}

/** Marker/MaxItems paging: the marker names the last item of the previous page. */
function paginate(all, idOf, query) {
  const marker = query.get('Marker') ?? ''
  const maxItemsText = query.get('MaxItems')
  if (maxItemsText !== null && !/^\d+$/.test(maxItemsText)) {
    throw new CloudFrontError(400, 'InvalidArgument', 'MaxItems must be a non-negative integer.')
  }
  const maxItems = maxItemsText === null ? DEFAULT_MAX_ITEMS : Number(maxItemsText)
  let start = 0
  if (marker !== '') {
    const index = all.findIndex((item) => idOf(item) === marker)
    if (index === -1) throw new CloudFrontError(400, 'InvalidArgument', 'The marker is not valid.')
    start = index + 1
  }
  const items = all.slice(start, start + maxItems)
  const isTruncated = start + items.length < all.length
  return {
    items,
    envelope: (itemMarkup) => [
      tagged('Marker', marker),
      ...(isTruncated && items.length > 0 ? [tagged('NextMarker', idOf(items[items.length - 1]))] : []),
      tagged('MaxItems', maxItems),
      tagged('IsTruncated', String(isTruncated)),
      tagged('Quantity', itemMarkup.length),
      ...(itemMarkup.length > 0 ? [tagged('Items', many(itemMarkup))] : []),
    ],
  }
}

/** The batch as far as it can be read, for the request record; never throws. */
function peekBatch(body) {
  try {
    const root = parseXml(body)
    const paths = child(root, 'Paths')
    const items = paths && child(paths, 'Items')
    const reference = child(root, 'CallerReference')
    return {
      callerReference: reference?.text,
      paths: items ? items.children.filter((c) => c.name === 'Path').map((c) => c.text) : undefined,
    }
  } catch {
    return {}
  }
}

/** Reads and validates an `<InvalidationBatch>` as CloudFront does. */
function parseBatch(body) {
  if (body.trim() === '') {
    throw new CloudFrontError(
      400,
      'MissingBody',
      'This operation requires a body. Ensure that the body is present and the Content-Type header is set.',
    )
  }
  let root
  try {
    root = parseXml(body)
  } catch (error) {
    throw new CloudFrontError(400, 'MalformedXML', `The XML you provided was not well-formed: ${error.message}`)
  }
  if (root.name !== 'InvalidationBatch') throw malformed('invalidationBatch')
  const pathsElement = child(root, 'Paths')
  if (!pathsElement) throw malformed('invalidationBatch.paths')
  const quantityElement = child(pathsElement, 'Quantity')
  if (!quantityElement) throw malformed('invalidationBatch.paths.quantity')
  const referenceElement = child(root, 'CallerReference')
  if (!referenceElement || referenceElement.text === '') throw malformed('invalidationBatch.callerReference')

  const itemsElement = child(pathsElement, 'Items')
  const paths = itemsElement ? itemsElement.children.filter((c) => c.name === 'Path').map((c) => c.text) : []
  const quantity = Number(quantityElement.text.trim())
  if (!/^\d+$/.test(quantityElement.text.trim()) || quantity !== paths.length) {
    throw new CloudFrontError(400, 'InconsistentQuantities', "The value of Quantity and the size of Items don't match.")
  }
  if (paths.length === 0 || paths.some((p) => !p.startsWith('/') || p.length > MAX_PATH_LENGTH)) {
    throw new CloudFrontError(400, 'InvalidArgument', 'Your request contains one or more invalid invalidation paths.')
  }
  return { callerReference: referenceElement.text, paths }
}

const isWildcard = (path) => path.endsWith('*')

function samePaths(a, b) {
  if (a.length !== b.length) return false
  const sortedA = [...a].sort()
  const sortedB = [...b].sort()
  return sortedA.every((p, i) => p === sortedB[i])
}

function routeOf(method, pathname) {
  const parts = pathname.split('/').filter(Boolean).map(safeDecode)
  if (parts[0] !== API_VERSION || parts[1] !== 'distribution') return { op: 'Unknown' }
  if (parts.length === 2 && method === 'GET') return { op: 'ListDistributions' }
  if (parts.length >= 4 && parts[3] === 'invalidation') {
    const distributionId = parts[2]
    if (parts.length === 4 && method === 'POST') return { op: 'CreateInvalidation', distributionId }
    if (parts.length === 4 && method === 'GET') return { op: 'ListInvalidations', distributionId }
    if (parts.length === 5 && method === 'GET') return { op: 'GetInvalidation', distributionId, invalidationId: parts[4] }
  }
  return { op: 'Unknown' }
}

function safeDecode(segment) {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'

function newId(prefix, length) {
  const bytes = crypto.randomBytes(length)
  let id = prefix
  for (const byte of bytes) id += ID_ALPHABET[byte % ID_ALPHABET.length]
  return id
}

module.exports = { startFakeCloudFront, parseXml, NAMESPACE }
