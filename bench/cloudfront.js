'use strict'

// A lean CloudFront-compatible endpoint for timing sends: it answers at once, with CloudFront's wire format for
// CreateInvalidation (the batch echoed back, as CloudFront does), ListInvalidations and GetInvalidation, and every
// invalidation completed at once. It checks what a send depends on (Quantity matches the paths, a CallerReference
// reused with another batch is refused) but, unlike the test suite's fake, does not parse the XML: a 3,000-path batch
// costs it well under a millisecond, so the time measured is the sender's.

const http = require('node:http')
const crypto = require('node:crypto')

const API_VERSION = '2020-05-31'
const NAMESPACE = `http://cloudfront.amazonaws.com/doc/${API_VERSION}/`
const XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
const MAX_BODY_BYTES = 16 * 1024 * 1024

const between = (text, open, close) => {
  const start = text.indexOf(open)
  if (start === -1) return null
  const end = text.indexOf(close, start + open.length)
  return end === -1 ? null : text.slice(start + open.length, end)
}

function countPaths (items) {
  let count = 0
  for (let at = items.indexOf('<Path>'); at !== -1; at = items.indexOf('<Path>', at + 6)) count++
  return count
}

function errorXml (code, message) {
  return `${XML_HEAD}<ErrorResponse xmlns="${NAMESPACE}"><Error><Type>Sender</Type><Code>${code}</Code>` +
    `<Message>${message}</Message></Error><RequestId>${crypto.randomUUID()}</RequestId></ErrorResponse>`
}

/**
 * Starts the endpoint on 127.0.0.1 and a free port for the distributions `dists`. Resolves with
 * `{ endpoint, requests, pathCount(dist), reset(), stop() }`; `requests` holds `{ op, at }` per request.
 */
async function startCloudFrontStub ({ dists }) {
  const state = new Map(dists.map((id) => [id, { invalidations: [], byReference: new Map(), paths: 0 }]))
  let requests = []
  let sequence = 0

  function invalidationXml (inv, items) {
    return `${XML_HEAD}<Invalidation xmlns="${NAMESPACE}"><Id>${inv.id}</Id><Status>Completed</Status>` +
      `<CreateTime>${inv.createTime}</CreateTime><InvalidationBatch><Paths><Quantity>${inv.quantity}</Quantity>` +
      `${items === null ? '' : `<Items>${items}</Items>`}</Paths><CallerReference>${inv.callerReference}</CallerReference>` +
      '</InvalidationBatch></Invalidation>'
  }

  function create (dist, body) {
    const reference = between(body, '<CallerReference>', '</CallerReference>')
    const quantity = Number(between(body, '<Quantity>', '</Quantity>'))
    const items = between(body, '<Items>', '</Items>') ?? ''
    const count = countPaths(items)
    if (!reference) return { status: 400, xml: errorXml('MalformedXML', 'CallerReference is missing.') }
    if (!Number.isInteger(quantity) || quantity !== count || count === 0) {
      return { status: 400, xml: errorXml('InconsistentQuantities', "The value of Quantity and the size of Items don't match.") }
    }
    const previous = dist.byReference.get(reference)
    if (previous) {
      if (previous.quantity !== count) {
        return { status: 400, xml: errorXml('InvalidArgument', 'The caller reference was used for a previous, different batch.') }
      }
      return { status: 201, xml: invalidationXml(previous, items), id: previous.id }
    }
    const inv = {
      id: `I${String(++sequence).padStart(12, '0')}`,
      callerReference: reference,
      quantity: count,
      createTime: new Date().toISOString()
    }
    dist.invalidations.push(inv)
    dist.byReference.set(reference, inv)
    dist.paths += count
    return { status: 201, xml: invalidationXml(inv, items), id: inv.id }
  }

  function list (dist, maxItems) {
    const newest = dist.invalidations.slice(-maxItems).reverse()
    const summaries = newest.map((inv) =>
      `<InvalidationSummary><Id>${inv.id}</Id><CreateTime>${inv.createTime}</CreateTime><Status>Completed</Status></InvalidationSummary>`)
    const truncated = dist.invalidations.length > maxItems
    return {
      status: 200,
      xml: `${XML_HEAD}<InvalidationList xmlns="${NAMESPACE}"><Marker></Marker>` +
        (truncated ? `<NextMarker>${newest[newest.length - 1].id}</NextMarker>` : '') +
        `<MaxItems>${maxItems}</MaxItems><IsTruncated>${truncated}</IsTruncated><Quantity>${summaries.length}</Quantity>` +
        (summaries.length ? `<Items>${summaries.join('')}</Items>` : '') + '</InvalidationList>'
    }
  }

  function answer (method, url, body) {
    const parts = url.pathname.split('/').filter(Boolean)
    if (parts[0] !== API_VERSION || parts[1] !== 'distribution' || parts[3] !== 'invalidation') {
      return { op: 'Unknown', status: 404, xml: errorXml('UnknownOperationException', 'Not supported here.') }
    }
    const dist = state.get(parts[2])
    if (!dist) return { op: 'Unknown', status: 404, xml: errorXml('NoSuchDistribution', 'The specified distribution does not exist.') }
    if (parts.length === 4 && method === 'POST') return { op: 'CreateInvalidation', ...create(dist, body) }
    if (parts.length === 4 && method === 'GET') {
      const maxItems = Math.min(Number(url.searchParams.get('MaxItems') ?? 100) || 100, 1000)
      return { op: 'ListInvalidations', ...list(dist, maxItems) }
    }
    if (parts.length === 5 && method === 'GET') {
      const inv = dist.invalidations.find((i) => i.id === parts[4])
      if (!inv) return { op: 'GetInvalidation', status: 404, xml: errorXml('NoSuchInvalidation', 'The specified invalidation does not exist.') }
      return { op: 'GetInvalidation', status: 200, xml: invalidationXml(inv, null) }
    }
    return { op: 'Unknown', status: 404, xml: errorXml('UnknownOperationException', 'Not supported here.') }
  }

  const server = http.createServer((req, res) => {
    const chunks = []
    let size = 0
    req.on('data', (chunk) => {
      size += chunk.length
      if (size > MAX_BODY_BYTES) req.destroy()
      else chunks.push(chunk)
    })
    req.on('end', () => {
      const url = new URL(req.url, 'http://localhost')
      const { op, status, xml, id } = answer(req.method, url, Buffer.concat(chunks).toString('utf8'))
      requests.push({ op, at: Date.now(), status })
      const payload = Buffer.from(xml, 'utf8')
      const headers = { 'Content-Type': 'text/xml', 'Content-Length': payload.length, 'x-amzn-RequestId': crypto.randomUUID() }
      if (id) headers.Location = `https://cloudfront.amazonaws.com/${API_VERSION}${url.pathname}/${id}`
      res.writeHead(status, headers)
      res.end(payload)
    })
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })

  return {
    endpoint: `http://127.0.0.1:${server.address().port}`,
    get requests () { return requests },
    /** Paths CloudFront accepted for `dist`, each CallerReference counted once. */
    pathCount: (dist) => state.get(dist)?.paths ?? 0,
    reset () {
      requests = []
      for (const dist of state.values()) {
        dist.invalidations = []
        dist.byReference.clear()
        dist.paths = 0
      }
    },
    async stop () {
      const closed = new Promise((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      await closed
    }
  }
}

module.exports = { startCloudFrontStub }
