'use strict'

// A client of CloudFront's REST XML API (version 2020-05-31) over plain HTTP,
// for the tests to create distributions on moto and read back what it received.

const { randomUUID } = require('node:crypto')

const API = '/2020-05-31'
const XMLNS = 'http://cloudfront.amazonaws.com/doc/2020-05-31/'
const REQUEST_TIMEOUT_MS = 30_000

// ---------------------------------------------------------------------------
// A small XML reader, enough for CloudFront's responses: elements, text,
// entities, CDATA; declarations, comments and attributes are skipped.

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

function decodeEntities (text) {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);/g, (whole, ref) => {
    if (ref[0] === '#') {
      const code = ref[1] === 'x' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10)
      return Number.isFinite(code) && code <= 0x10ffff ? String.fromCodePoint(code) : whole
    }
    return Object.prototype.hasOwnProperty.call(ENTITIES, ref) ? ENTITIES[ref] : whole
  })
}

function escapeXml (text) {
  return String(text)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
}

/**
 * Parses an XML document into its root element:
 * `{ name, children: Element[], text }`, where `name` has no namespace prefix
 * and `text` is the element's own decoded character data.
 */
function parseXml (xml) {
  const root = { name: '#document', children: [], text: '' }
  const stack = [root]
  let i = 0
  while (i < xml.length) {
    const lt = xml.indexOf('<', i)
    const top = stack[stack.length - 1]
    if (lt === -1) {
      top.text += decodeEntities(xml.slice(i))
      break
    }
    if (lt > i) top.text += decodeEntities(xml.slice(i, lt))
    if (xml.startsWith('<!--', lt)) {
      const end = xml.indexOf('-->', lt + 4)
      if (end === -1) throw new Error('XML: unterminated comment')
      i = end + 3
    } else if (xml.startsWith('<![CDATA[', lt)) {
      const end = xml.indexOf(']]>', lt + 9)
      if (end === -1) throw new Error('XML: unterminated CDATA section')
      top.text += xml.slice(lt + 9, end)
      i = end + 3
    } else if (xml[lt + 1] === '?' || xml[lt + 1] === '!') {
      const end = xml.indexOf('>', lt)
      if (end === -1) throw new Error('XML: unterminated declaration')
      i = end + 1
    } else if (xml[lt + 1] === '/') {
      const end = xml.indexOf('>', lt)
      if (end === -1) throw new Error('XML: unterminated end tag')
      const name = localName(xml.slice(lt + 2, end).trim())
      if (stack.length < 2 || top.name !== name) {
        throw new Error(`XML: unexpected </${name}>`)
      }
      stack.pop()
      i = end + 1
    } else {
      const end = findTagEnd(xml, lt)
      if (end === -1) throw new Error('XML: unterminated start tag')
      let body = xml.slice(lt + 1, end)
      const selfClosing = body.endsWith('/')
      if (selfClosing) body = body.slice(0, -1)
      const name = localName(body.trim().split(/\s/, 1)[0])
      if (!name) throw new Error('XML: empty tag name')
      const element = { name, children: [], text: '' }
      top.children.push(element)
      if (!selfClosing) stack.push(element)
      i = end + 1
    }
  }
  if (stack.length !== 1) throw new Error(`XML: unclosed <${stack[stack.length - 1].name}>`)
  const elements = root.children
  if (elements.length !== 1) throw new Error('XML: expected exactly one root element')
  return elements[0]
}

// The '>' that ends a start tag, skipping quoted attribute values.
function findTagEnd (xml, from) {
  let quote = null
  for (let j = from + 1; j < xml.length; j++) {
    const c = xml[j]
    if (quote) {
      if (c === quote) quote = null
    } else if (c === '"' || c === "'") {
      quote = c
    } else if (c === '>') {
      return j
    }
  }
  return -1
}

function localName (qualified) {
  const colon = qualified.indexOf(':')
  return colon === -1 ? qualified : qualified.slice(colon + 1)
}

/** The first child element named `name`, or undefined. */
function child (element, name) {
  return element?.children.find((c) => c.name === name)
}

/** The child elements named `name`. */
function childrenNamed (element, name) {
  return element ? element.children.filter((c) => c.name === name) : []
}

/** The text of the element at `names` (a path of child names) below `element`. */
function textAt (element, ...names) {
  let current = element
  for (const name of names) current = child(current, name)
  return current ? current.text : undefined
}

// ---------------------------------------------------------------------------
// Requests

/** An error answer of the CloudFront API. */
class CloudFrontApiError extends Error {
  constructor (status, code, message, body) {
    super(`CloudFront API ${status} ${code}: ${message}`)
    this.name = 'CloudFrontApiError'
    this.status = status
    this.code = code
    this.body = body
  }
}

// moto routes requests by the service named in the SigV4 credential scope and
// checks no signature, so a well-shaped header with dummy values is enough.
function authHeaders () {
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '')
  const day = amzDate.slice(0, 8)
  return {
    'x-amz-date': amzDate,
    authorization:
      `AWS4-HMAC-SHA256 Credential=testing/${day}/us-east-1/cloudfront/aws4_request, ` +
      'SignedHeaders=host;x-amz-date, Signature=' + '0'.repeat(64)
  }
}

async function apiRequest (endpoint, method, pathAndQuery, body) {
  const headers = authHeaders()
  // moto reads form-encoded bodies as forms: the XML content type is required.
  if (body !== undefined) headers['content-type'] = 'application/xml'
  const response = await fetch(endpoint + pathAndQuery, {
    method,
    headers,
    body,
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
  })
  const text = await response.text()
  if (!response.ok) {
    let code = 'HttpError'
    let message = text.slice(0, 500)
    try {
      const error = child(parseXml(text), 'Error')
      code = textAt(error, 'Code') ?? code
      message = textAt(error, 'Message') ?? message
    } catch {
      // Not an XML error document: keep the raw text.
    }
    throw new CloudFrontApiError(response.status, code, message, text)
  }
  return { status: response.status, headers: response.headers, text, xml: text ? parseXml(text) : null }
}

function distributionConfigXml ({ originDomain, originPath, callerReference, s3, comment }) {
  const originConfig = s3
    ? '<S3OriginConfig><OriginAccessIdentity></OriginAccessIdentity></S3OriginConfig>'
    : '<CustomOriginConfig><HTTPPort>80</HTTPPort><HTTPSPort>443</HTTPSPort>' +
      '<OriginProtocolPolicy>match-viewer</OriginProtocolPolicy></CustomOriginConfig>'
  return '<?xml version="1.0" encoding="UTF-8"?>' +
    `<DistributionConfig xmlns="${XMLNS}">` +
    `<CallerReference>${escapeXml(callerReference)}</CallerReference>` +
    `<Comment>${escapeXml(comment)}</Comment>` +
    '<Enabled>true</Enabled>' +
    '<Origins><Quantity>1</Quantity><Items><Origin>' +
    `<Id>origin-1</Id><DomainName>${escapeXml(originDomain)}</DomainName>` +
    (originPath ? `<OriginPath>${escapeXml(originPath)}</OriginPath>` : '') + originConfig +
    '</Origin></Items></Origins>' +
    '<DefaultCacheBehavior><TargetOriginId>origin-1</TargetOriginId>' +
    '<ViewerProtocolPolicy>allow-all</ViewerProtocolPolicy>' +
    '<ForwardedValues><QueryString>false</QueryString><Cookies><Forward>none</Forward></Cookies></ForwardedValues>' +
    '<TrustedSigners><Enabled>false</Enabled><Quantity>0</Quantity></TrustedSigners>' +
    '<MinTTL>0</MinTTL></DefaultCacheBehavior>' +
    '</DistributionConfig>'
}

function invalidationBatchXml (paths, callerReference) {
  const items = paths.map((p) => `<Path>${escapeXml(p)}</Path>`).join('')
  return '<?xml version="1.0" encoding="UTF-8"?>' +
    `<InvalidationBatch xmlns="${XMLNS}">` +
    `<Paths><Quantity>${paths.length}</Quantity><Items>${items}</Items></Paths>` +
    `<CallerReference>${escapeXml(callerReference)}</CallerReference>` +
    '</InvalidationBatch>'
}

function invalidationFromXml (invalidation) {
  const batch = child(invalidation, 'InvalidationBatch')
  return {
    id: textAt(invalidation, 'Id'),
    status: textAt(invalidation, 'Status'),
    createTime: textAt(invalidation, 'CreateTime'),
    callerReference: textAt(batch, 'CallerReference'),
    paths: childrenNamed(child(child(batch, 'Paths'), 'Items'), 'Path').map((p) => p.text)
  }
}

function encodeId (id) {
  if (typeof id !== 'string' || id === '') throw new TypeError('expected a non-empty id string')
  return encodeURIComponent(id)
}

// ---------------------------------------------------------------------------
// The API client

/**
 * A client of the CloudFront REST API at `endpoint` (moto, or a server shaped
 * like it). Every method rejects with a CloudFrontApiError on an error answer.
 */
function cloudFrontApi (endpoint) {
  const request = (method, pathAndQuery, body) => apiRequest(endpoint, method, pathAndQuery, body)

  async function createDistribution ({ originDomain, originPath, callerReference, s3 = false, comment = '' } = {}) {
    if (typeof originDomain !== 'string' || originDomain === '') {
      throw new TypeError('createDistribution: originDomain must be a non-empty string')
    }
    const body = distributionConfigXml({
      originDomain,
      originPath,
      callerReference: callerReference ?? `dist-${randomUUID()}`,
      s3,
      comment
    })
    const { xml, headers } = await request('POST', `${API}/distribution`, body)
    return {
      id: textAt(xml, 'Id'),
      arn: textAt(xml, 'ARN'),
      domainName: textAt(xml, 'DomainName'),
      etag: headers.get('etag')
    }
  }

  async function createInvalidation (distributionId, paths, callerReference = `inv-${randomUUID()}`) {
    if (!Array.isArray(paths)) throw new TypeError('createInvalidation: paths must be an array')
    const { xml } = await request(
      'POST',
      `${API}/distribution/${encodeId(distributionId)}/invalidation`,
      invalidationBatchXml(paths, callerReference)
    )
    return invalidationFromXml(xml)
  }

  async function listInvalidations (distributionId) {
    const out = []
    let marker = ''
    for (let page = 0; page < 10_000; page++) {
      const query = marker ? `?Marker=${encodeURIComponent(marker)}` : ''
      const { xml } = await request('GET', `${API}/distribution/${encodeId(distributionId)}/invalidation${query}`)
      for (const summary of childrenNamed(child(xml, 'Items'), 'InvalidationSummary')) {
        out.push({
          id: textAt(summary, 'Id'),
          status: textAt(summary, 'Status'),
          createTime: textAt(summary, 'CreateTime')
        })
      }
      if (textAt(xml, 'IsTruncated') !== 'true') return out
      marker = textAt(xml, 'NextMarker') ?? ''
      if (!marker) return out
    }
    throw new Error('listInvalidations: too many pages')
  }

  async function getInvalidation (distributionId, invalidationId) {
    const { xml } = await request(
      'GET',
      `${API}/distribution/${encodeId(distributionId)}/invalidation/${encodeId(invalidationId)}`
    )
    return invalidationFromXml(xml)
  }

  async function allInvalidatedPaths (distributionId) {
    const summaries = await listInvalidations(distributionId)
    // Oldest first; the sort is stable, so equal times keep the server's order.
    summaries.sort((a, b) => (a.createTime ?? '').localeCompare(b.createTime ?? ''))
    const out = []
    for (const { id } of summaries) {
      const { callerReference, paths } = await getInvalidation(distributionId, id)
      out.push({ id, callerReference, paths })
    }
    return out
  }

  async function reset () {
    const response = await fetch(`${endpoint}/moto-api/reset`, {
      method: 'POST',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    })
    await response.arrayBuffer()
    if (!response.ok) throw new Error(`moto reset failed: HTTP ${response.status}`)
  }

  return {
    request,
    createDistribution,
    createInvalidation,
    listInvalidations,
    getInvalidation,
    allInvalidatedPaths,
    reset
  }
}

module.exports = {
  cloudFrontApi,
  parseXml,
  escapeXml,
  child,
  childrenNamed,
  textAt,
  CloudFrontApiError
}
