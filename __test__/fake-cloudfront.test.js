'use strict'

// The fake CloudFront used by the fault tests must answer like CloudFront:
// same routes, status codes, headers, XML shapes and rules. These tests drive it
// with plain HTTP and compare its answers with moto's.

const { describe, test, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { setTimeout: sleep } = require('node:timers/promises')

const { startFakeCloudFront, parseXml, NAMESPACE } = require('./helpers/fake-cloudfront')

const DIST = 'EDFDVBD6EXAMPLE'
const API = '/2020-05-31'

const escapeXml = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

function batchXml(paths, callerReference, quantity = paths.length) {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>` +
    `<InvalidationBatch xmlns="${NAMESPACE}"><Paths><Quantity>${quantity}</Quantity>` +
    (paths.length ? `<Items>${paths.map((p) => `<Path>${escapeXml(p)}</Path>`).join('')}</Items>` : '') +
    `</Paths><CallerReference>${escapeXml(callerReference)}</CallerReference></InvalidationBatch>`
  )
}

// moto routes a request to CloudFront by the credential scope of its signature.
const HEADERS = {
  'Content-Type': 'application/xml',
  Authorization:
    'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20200531/us-east-1/cloudfront/aws4_request, ' +
    'SignedHeaders=host, Signature=0000',
}

async function call(endpoint, method, urlPath, body) {
  const res = await fetch(endpoint + urlPath, { method, headers: HEADERS, body })
  const text = await res.text()
  return { status: res.status, headers: res.headers, text, xml: text ? parseXml(text) : undefined }
}

const createInvalidation = (endpoint, paths, callerReference, { dist = DIST, quantity } = {}) =>
  call(endpoint, 'POST', `${API}/distribution/${dist}/invalidation`, batchXml(paths, callerReference, quantity))

/** The element at `names` below `element`, if any. */
function elementAt(element, ...names) {
  let node = element
  for (const name of names) node = node?.children.find((c) => c.name === name)
  return node
}

/** The text of the element at `names` below `element`. */
const textAt = (element, ...names) => elementAt(element, ...names)?.text

const childrenNamed = (element, name) => element?.children.filter((c) => c.name === name) ?? []

/** The `<Path>` texts of an `<Invalidation>`. */
const pathItems = (invalidation) =>
  childrenNamed(elementAt(invalidation, 'InvalidationBatch', 'Paths', 'Items'), 'Path').map((p) => p.text)

/** Element names and nesting, without text. */
const structure = (element) => [element.name, element.children.map(structure)]

function assertError(answer, status, code, type = 'Sender') {
  assert.equal(answer.status, status, answer.text)
  assert.equal(answer.xml.name, 'ErrorResponse')
  assert.equal(answer.xml.attributes.xmlns, NAMESPACE)
  assert.deepEqual(structure(answer.xml), [
    'ErrorResponse',
    [
      ['Error', [['Type', []], ['Code', []], ['Message', []]]],
      ['RequestId', []],
    ],
  ])
  assert.equal(textAt(answer.xml, 'Error', 'Type'), type)
  assert.equal(textAt(answer.xml, 'Error', 'Code'), code)
  assert.ok(textAt(answer.xml, 'Error', 'Message').length > 0)
  assert.equal(textAt(answer.xml, 'RequestId'), answer.headers.get('x-amzn-requestid'))
}

describe('fake CloudFront', () => {
  let cf
  before(async () => {
    cf = await startFakeCloudFront({
      distributions: [DIST, { id: 'E2OTHER', originDomain: 'assets.example.org' }],
    })
  })
  after(() => cf.stop())
  beforeEach(() => cf.reset())

  test('binds to 127.0.0.1 on a free port', () => {
    assert.match(cf.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/)
  })

  describe('CreateInvalidation', () => {
    test('answers 201 with Location, x-amzn-RequestId and the Invalidation', async () => {
      const answer = await createInvalidation(cf.endpoint, ['/index.html', '/a&b <c>', '/img/*'], 'ref-1')
      assert.equal(answer.status, 201)
      assert.match(answer.headers.get('content-type'), /xml/)
      assert.ok(answer.headers.get('x-amzn-requestid'))
      const id = textAt(answer.xml, 'Id')
      assert.match(id, /^I[A-Z0-9]+$/)
      assert.equal(
        answer.headers.get('location'),
        `https://cloudfront.amazonaws.com/2020-05-31/distribution/${DIST}/invalidation/${id}`,
      )
      assert.equal(answer.xml.name, 'Invalidation')
      assert.equal(answer.xml.attributes.xmlns, NAMESPACE)
      assert.deepEqual(structure(answer.xml), [
        'Invalidation',
        [
          ['Id', []],
          ['Status', []],
          ['CreateTime', []],
          [
            'InvalidationBatch',
            [
              [
                'Paths',
                [
                  ['Quantity', []],
                  ['Items', [['Path', []], ['Path', []], ['Path', []]]],
                ],
              ],
              ['CallerReference', []],
            ],
          ],
        ],
      ])
      assert.equal(textAt(answer.xml, 'Status'), 'Completed')
      assert.ok(!Number.isNaN(Date.parse(textAt(answer.xml, 'CreateTime'))))
      assert.deepEqual(pathItems(answer.xml), ['/index.html', '/a&b <c>', '/img/*'])
      assert.equal(textAt(answer.xml, 'InvalidationBatch', 'Paths', 'Quantity'), '3')
      assert.equal(textAt(answer.xml, 'InvalidationBatch', 'CallerReference'), 'ref-1')

      assert.deepEqual(cf.pathsReceived(DIST), ['/index.html', '/a&b <c>', '/img/*'])
      const [created] = cf.invalidations(DIST)
      assert.equal(created.id, id)
      assert.equal(created.callerReference, 'ref-1')
      assert.equal(created.status, 'Completed')
      assert.ok(created.createTime instanceof Date)
    })

    test('a Quantity other than the item count is 400 InconsistentQuantities', async () => {
      assertError(await createInvalidation(cf.endpoint, ['/a', '/b'], 'q', { quantity: 3 }), 400, 'InconsistentQuantities')
      assertError(await createInvalidation(cf.endpoint, ['/a'], 'q', { quantity: 0 }), 400, 'InconsistentQuantities')
      assert.deepEqual(cf.invalidations(DIST), [])
    })

    test('a path not starting with "/" or longer than 4000 characters is 400 InvalidArgument', async () => {
      assertError(await createInvalidation(cf.endpoint, ['/ok', 'no-slash'], 'p1'), 400, 'InvalidArgument')
      assertError(await createInvalidation(cf.endpoint, ['/' + 'x'.repeat(4000)], 'p2'), 400, 'InvalidArgument')
      assertError(await createInvalidation(cf.endpoint, [], 'p3'), 400, 'InvalidArgument')
      const longest = '/' + 'x'.repeat(3999)
      assert.equal((await createInvalidation(cf.endpoint, [longest], 'p4')).status, 201)
      assert.deepEqual(cf.pathsReceived(DIST), [longest])
    })

    test('a missing body is 400 MissingBody, broken XML 400 MalformedXML', async () => {
      assertError(await call(cf.endpoint, 'POST', `${API}/distribution/${DIST}/invalidation`, ''), 400, 'MissingBody')
      assertError(
        await call(cf.endpoint, 'POST', `${API}/distribution/${DIST}/invalidation`, '<InvalidationBatch><Paths>'),
        400,
        'MalformedXML',
      )
      const noReference = batchXml(['/a'], 'r').replace(/<CallerReference>.*<\/CallerReference>/, '')
      assertError(await call(cf.endpoint, 'POST', `${API}/distribution/${DIST}/invalidation`, noReference), 400, 'MalformedXML')
    })

    test('an unknown distribution is 404 NoSuchDistribution', async () => {
      assertError(await createInvalidation(cf.endpoint, ['/a'], 'r', { dist: 'ENOSUCH' }), 404, 'NoSuchDistribution')
      assertError(await call(cf.endpoint, 'GET', `${API}/distribution/ENOSUCH/invalidation`), 404, 'NoSuchDistribution')
      assertError(await call(cf.endpoint, 'GET', `${API}/distribution/ENOSUCH/invalidation/I1`), 404, 'NoSuchDistribution')
    })

    test('a repeated CallerReference with the same paths returns the existing invalidation', async () => {
      const first = await createInvalidation(cf.endpoint, ['/a', '/b'], 'same')
      const again = await createInvalidation(cf.endpoint, ['/b', '/a'], 'same')
      assert.equal(again.status, 201)
      assert.equal(textAt(again.xml, 'Id'), textAt(first.xml, 'Id'))
      assert.equal(again.headers.get('location'), first.headers.get('location'))
      assert.equal(cf.invalidations(DIST).length, 1)
      assert.deepEqual(cf.pathsReceived(DIST), ['/a', '/b'])
    })

    test('a repeated CallerReference with other paths is 400 InvalidArgument and creates nothing', async () => {
      await createInvalidation(cf.endpoint, ['/a', '/b'], 'same')
      const answer = await createInvalidation(cf.endpoint, ['/a', '/c'], 'same')
      assertError(answer, 400, 'InvalidArgument')
      assert.match(textAt(answer.xml, 'Error', 'Message'), /caller reference that was used for a previous invalidation/)
      assert.equal(cf.invalidations(DIST).length, 1)
    })

    test('CallerReferences are per distribution', async () => {
      await createInvalidation(cf.endpoint, ['/a'], 'shared')
      assert.equal((await createInvalidation(cf.endpoint, ['/z'], 'shared', { dist: 'E2OTHER' })).status, 201)
      assert.deepEqual(cf.pathsReceived('E2OTHER'), ['/z'])
      assert.deepEqual(cf.pathsReceived(), ['/a', '/z'])
    })
  })

  describe('GetInvalidation and ListInvalidations', () => {
    test('GetInvalidation returns the invalidation; an unknown id is 404 NoSuchInvalidation', async () => {
      const created = await createInvalidation(cf.endpoint, ['/x', '/y*'], 'get-1')
      const id = textAt(created.xml, 'Id')
      const got = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation/${id}`)
      assert.equal(got.status, 200)
      assert.equal(got.headers.get('location'), null)
      assert.ok(got.headers.get('x-amzn-requestid'))
      assert.deepEqual(structure(got.xml), structure(created.xml))
      assert.equal(got.text.replace(/<Status>\w+<\/Status>/, ''), created.text.replace(/<Status>\w+<\/Status>/, ''))
      assertError(await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation/INOSUCH`), 404, 'NoSuchInvalidation')
    })

    test('ListInvalidations pages newest first with Marker, NextMarker and IsTruncated', async () => {
      const ids = []
      for (let i = 0; i < 5; i++) ids.push(textAt((await createInvalidation(cf.endpoint, [`/${i}`], `l-${i}`)).xml, 'Id'))
      const newestFirst = [...ids].reverse()

      const full = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation`)
      assert.equal(full.status, 200)
      assert.equal(full.xml.name, 'InvalidationList')
      assert.equal(full.xml.attributes.xmlns, NAMESPACE)
      assert.deepEqual(
        full.xml.children.map((c) => c.name),
        ['Marker', 'MaxItems', 'IsTruncated', 'Quantity', 'Items'],
      )
      assert.equal(textAt(full.xml, 'MaxItems'), '100')
      assert.equal(textAt(full.xml, 'IsTruncated'), 'false')
      const summaries = childrenNamed(elementAt(full.xml, 'Items'), 'InvalidationSummary')
      assert.deepEqual(
        summaries.map((s) => s.children.map((c) => c.name)),
        summaries.map(() => ['Id', 'CreateTime', 'Status']),
      )
      assert.deepEqual(
        summaries.map((s) => textAt(s, 'Id')),
        newestFirst,
      )
      assert.ok(summaries.every((s) => textAt(s, 'Status') === 'Completed'))

      const seen = []
      let marker = ''
      for (let page = 0; page < 10; page++) {
        const query = `?MaxItems=2${marker ? `&Marker=${marker}` : ''}`
        const answer = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation${query}`)
        assert.equal(textAt(answer.xml, 'Marker'), marker)
        assert.equal(textAt(answer.xml, 'MaxItems'), '2')
        const items = childrenNamed(elementAt(answer.xml, 'Items'), 'InvalidationSummary')
        assert.equal(textAt(answer.xml, 'Quantity'), String(items.length))
        seen.push(...items.map((s) => textAt(s, 'Id')))
        if (textAt(answer.xml, 'IsTruncated') === 'false') {
          assert.equal(textAt(answer.xml, 'NextMarker'), undefined)
          break
        }
        marker = textAt(answer.xml, 'NextMarker')
        assert.equal(marker, seen[seen.length - 1])
      }
      assert.deepEqual(seen, newestFirst)

      assertError(await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation?MaxItems=lots`), 400, 'InvalidArgument')
    })

    test('an empty ListInvalidations has Quantity 0 and no Items', async () => {
      const answer = await call(cf.endpoint, 'GET', `${API}/distribution/E2OTHER/invalidation`)
      assert.equal(answer.status, 200)
      assert.equal(textAt(answer.xml, 'Quantity'), '0')
      assert.equal(textAt(answer.xml, 'Items'), undefined)
    })
  })

  test('ListDistributions lists the configured distributions, ids or { id, originDomain }', async () => {
    const answer = await call(cf.endpoint, 'GET', `${API}/distribution`)
    assert.equal(answer.status, 200)
    assert.equal(answer.xml.name, 'DistributionList')
    assert.equal(answer.xml.attributes.xmlns, NAMESPACE)
    assert.deepEqual(
      answer.xml.children.map((c) => c.name),
      ['Marker', 'MaxItems', 'IsTruncated', 'Quantity', 'Items'],
    )
    assert.equal(textAt(answer.xml, 'Quantity'), '2')
    const summaries = childrenNamed(elementAt(answer.xml, 'Items'), 'DistributionSummary')
    assert.deepEqual(
      summaries.map((s) => textAt(s, 'Id')),
      [DIST, 'E2OTHER'],
    )
    for (const s of summaries) {
      assert.match(textAt(s, 'DomainName'), /^d[0-9a-z]+\.cloudfront\.net$/)
      assert.equal(textAt(s, 'Status'), 'Deployed')
      assert.equal(textAt(s, 'Origins', 'Quantity'), '1')
      for (const name of ['ARN', 'LastModifiedTime', 'Aliases', 'DefaultCacheBehavior', 'Enabled']) {
        assert.ok(s.children.some((c) => c.name === name), name)
      }
    }
    assert.equal(textAt(summaries[0], 'Origins', 'Items', 'Origin', 'DomainName'), 'origin.example.com')
    assert.equal(textAt(summaries[1], 'Origins', 'Items', 'Origin', 'DomainName'), 'assets.example.org')

    const first = await call(cf.endpoint, 'GET', `${API}/distribution?MaxItems=1`)
    assert.equal(textAt(first.xml, 'IsTruncated'), 'true')
    assert.equal(textAt(first.xml, 'NextMarker'), DIST)
    const second = await call(cf.endpoint, 'GET', `${API}/distribution?MaxItems=1&Marker=${DIST}`)
    assert.equal(textAt(second.xml, 'IsTruncated'), 'false')
    assert.equal(textAt(second.xml, 'Items', 'DistributionSummary', 'Id'), 'E2OTHER')
  })

  describe('faults', () => {
    const errorKinds = [
      [503, 503, 'ServiceUnavailable', 'Receiver'],
      ['throttle', 400, 'Throttling', 'Sender'],
      ['tooMany', 400, 'TooManyInvalidationsInProgress', 'Sender'],
      ['batchTooLarge', 413, 'BatchTooLarge', 'Sender'],
      ['accessDenied', 403, 'AccessDenied', 'Sender'],
      ['noSuchDistribution', 404, 'NoSuchDistribution', 'Sender'],
    ]
    for (const [kind, status, code, type] of errorKinds) {
      test(`${kind} answers ${status} ${code} and creates nothing`, async () => {
        cf.fail(kind)
        assertError(await createInvalidation(cf.endpoint, ['/a'], `f-${kind}`), status, code, type)
        assert.deepEqual(cf.pathsReceived(DIST), [])
        assert.equal((await createInvalidation(cf.endpoint, ['/a'], `f-${kind}`)).status, 201)
        assert.deepEqual(cf.pathsReceived(DIST), ['/a'])
        assert.deepEqual(
          cf.requests.map((r) => r.answeredWith),
          [status, 201],
        )
        assert.equal(cf.requests[0].errorCode, code)
      })
    }

    test('reset destroys the connection without an answer and creates nothing', async () => {
      cf.fail('reset')
      await assert.rejects(createInvalidation(cf.endpoint, ['/a'], 'reset-1'))
      assert.deepEqual(cf.pathsReceived(DIST), [])
      assert.equal(cf.requests.length, 1)
      assert.equal(cf.requests[0].answeredWith, 'reset')
      assert.deepEqual(cf.requests[0].paths, ['/a'])
      assert.equal((await createInvalidation(cf.endpoint, ['/a'], 'reset-1')).status, 201)
    })

    test('acceptThenReset creates the invalidation but never answers', async () => {
      cf.fail('acceptThenReset')
      await assert.rejects(createInvalidation(cf.endpoint, ['/a', '/b'], 'atr-1'))
      assert.deepEqual(cf.pathsReceived(DIST), ['/a', '/b'])
      assert.equal(cf.requests[0].answeredWith, 'reset')
      // The retry with the same CallerReference finds the invalidation already made.
      const retry = await createInvalidation(cf.endpoint, ['/a', '/b'], 'atr-1')
      assert.equal(retry.status, 201)
      assert.equal(textAt(retry.xml, 'Id'), cf.invalidations(DIST)[0].id)
      assert.deepEqual(cf.pathsReceived(DIST), ['/a', '/b'])
    })

    test('slow answers normally after delayMs', async () => {
      cf.fail('slow', { delayMs: 300 })
      const started = Date.now()
      const answer = await createInvalidation(cf.endpoint, ['/slow'], 'slow-1')
      assert.ok(Date.now() - started >= 280, `answered after ${Date.now() - started} ms`)
      assert.equal(answer.status, 201)
      assert.deepEqual(cf.pathsReceived(DIST), ['/slow'])
    })

    test('delayMs also delays an error fault', async () => {
      cf.fail('throttle', { delayMs: 200 })
      const started = Date.now()
      assertError(await createInvalidation(cf.endpoint, ['/a'], 'd-1'), 400, 'Throttling')
      assert.ok(Date.now() - started >= 180)
    })

    test('faults are consumed in order, `times` each, by their operation only', async () => {
      cf.fail(503, { times: 2 })
      cf.fail('throttle')
      cf.fail('accessDenied', { op: 'ListInvalidations' })
      const list = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation`)
      assertError(list, 403, 'AccessDenied')
      const statuses = []
      for (let i = 0; i < 4; i++) statuses.push((await createInvalidation(cf.endpoint, ['/a'], 'order')).status)
      assert.deepEqual(statuses, [503, 503, 400, 201])
      assert.equal((await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation`)).status, 200)
      assert.deepEqual(
        cf.requests.map((r) => [r.op, r.answeredWith]),
        [
          ['ListInvalidations', 403],
          ['CreateInvalidation', 503],
          ['CreateInvalidation', 503],
          ['CreateInvalidation', 400],
          ['CreateInvalidation', 201],
          ['ListInvalidations', 200],
        ],
      )
    })

    test('GetInvalidation and ListDistributions take faults too', async () => {
      const id = textAt((await createInvalidation(cf.endpoint, ['/a'], 'g')).xml, 'Id')
      cf.fail('throttle', { op: 'GetInvalidation' })
      cf.fail('reset', { op: 'ListDistributions' })
      assertError(await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation/${id}`), 400, 'Throttling')
      assert.equal((await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation/${id}`)).status, 200)
      await assert.rejects(call(cf.endpoint, 'GET', `${API}/distribution`))
      assert.equal((await call(cf.endpoint, 'GET', `${API}/distribution`)).status, 200)
    })

    test('fail() rejects unknown kinds, operations and counts', () => {
      assert.throws(() => cf.fail('explode'), TypeError)
      assert.throws(() => cf.fail(500), TypeError)
      assert.throws(() => cf.fail(503, { op: 'DeleteDistribution' }), TypeError)
      assert.throws(() => cf.fail(503, { times: 0 }), RangeError)
      assert.throws(() => cf.fail('slow', { delayMs: -1 }), RangeError)
    })
  })

  test('requests records every request; reset() forgets faults, requests and invalidations', async () => {
    cf.fail(503, { times: 5 })
    const before = Date.now()
    await createInvalidation(cf.endpoint, ['/r1', '/r2'], 'rec')
    const [record] = cf.requests
    assert.equal(record.op, 'CreateInvalidation')
    assert.equal(record.method, 'POST')
    assert.equal(record.path, `${API}/distribution/${DIST}/invalidation`)
    assert.equal(record.callerReference, 'rec')
    assert.deepEqual(record.paths, ['/r1', '/r2'])
    assert.equal(record.answeredWith, 503)
    assert.ok(record.at >= before && record.at <= Date.now())

    cf.reset()
    assert.deepEqual(cf.requests, [])
    assert.equal((await createInvalidation(cf.endpoint, ['/r1'], 'rec')).status, 201)
    cf.reset()
    assert.deepEqual(cf.invalidations(DIST), [])
    assert.deepEqual(cf.pathsReceived(DIST), [])
    // The CallerReference is forgotten with its invalidation.
    assert.equal((await createInvalidation(cf.endpoint, ['/other'], 'rec')).status, 201)
  })
})

describe('fake CloudFront in-progress limits', () => {
  let cf
  before(async () => {
    cf = await startFakeCloudFront({ inProgressMs: 400, maxInProgressPaths: 5, maxInProgressWildcards: 2 })
  })
  after(() => cf.stop())
  beforeEach(() => cf.reset())

  test('an invalidation is InProgress for inProgressMs, then Completed', async () => {
    const created = await createInvalidation(cf.endpoint, ['/a'], 'ip-1')
    const id = textAt(created.xml, 'Id')
    assert.equal(textAt(created.xml, 'Status'), 'InProgress')
    assert.equal(cf.invalidations(DIST)[0].status, 'InProgress')
    const listed = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation`)
    assert.equal(textAt(listed.xml, 'Items', 'InvalidationSummary', 'Status'), 'InProgress')
    await sleep(450)
    const got = await call(cf.endpoint, 'GET', `${API}/distribution/${DIST}/invalidation/${id}`)
    assert.equal(textAt(got.xml, 'Status'), 'Completed')
    assert.equal(cf.invalidations(DIST)[0].status, 'Completed')
  })

  test('more in-progress paths than maxInProgressPaths is 400 TooManyInvalidationsInProgress', async () => {
    assert.equal((await createInvalidation(cf.endpoint, ['/1', '/2', '/3'], 'p-1')).status, 201)
    // Wildcards are counted apart: they do not use up the path allowance.
    assert.equal((await createInvalidation(cf.endpoint, ['/w*', '/4', '/5'], 'p-2')).status, 201)
    assertError(await createInvalidation(cf.endpoint, ['/6'], 'p-3'), 400, 'TooManyInvalidationsInProgress')
    assert.deepEqual(cf.pathsReceived(DIST), ['/1', '/2', '/3', '/w*', '/4', '/5'])
    assert.equal(cf.requests.at(-1).errorCode, 'TooManyInvalidationsInProgress')
  })

  test('more in-progress wildcard paths than maxInProgressWildcards is 400 TooManyInvalidationsInProgress', async () => {
    assert.equal((await createInvalidation(cf.endpoint, ['/a*', '/b*'], 'w-1')).status, 201)
    assertError(await createInvalidation(cf.endpoint, ['/c*'], 'w-2'), 400, 'TooManyInvalidationsInProgress')
    // A batch alone over the limit is refused as well.
    cf.reset()
    assertError(await createInvalidation(cf.endpoint, ['/a*', '/b*', '/c*'], 'w-3'), 400, 'TooManyInvalidationsInProgress')
  })

  test('completed invalidations free the limits', async () => {
    assert.equal((await createInvalidation(cf.endpoint, ['/1', '/2', '/3', '/4', '/5', '/x*', '/y*'], 'c-1')).status, 201)
    assertError(await createInvalidation(cf.endpoint, ['/6'], 'c-2'), 400, 'TooManyInvalidationsInProgress')
    await sleep(450)
    assert.equal((await createInvalidation(cf.endpoint, ['/6', '/z*'], 'c-2')).status, 201)
    assertError(await createInvalidation(cf.endpoint, ['/7*', '/8*'], 'c-3'), 400, 'TooManyInvalidationsInProgress')
    cf.completeAll()
    assert.equal((await createInvalidation(cf.endpoint, ['/7*', '/8*'], 'c-3')).status, 201)
  })

  test('a replayed CallerReference is not counted again', async () => {
    assert.equal((await createInvalidation(cf.endpoint, ['/1', '/2', '/3', '/4', '/5'], 'same')).status, 201)
    const replay = await createInvalidation(cf.endpoint, ['/1', '/2', '/3', '/4', '/5'], 'same')
    assert.equal(replay.status, 201)
    assert.equal(textAt(replay.xml, 'Status'), 'InProgress')
    assert.equal(cf.invalidations(DIST).length, 1)
  })
})

// ---------------------------------------------------------------------------
// Cross-check with moto, which answers with the response shapes of the real API.

function motoCommand() {
  const venv = path.join(__dirname, '..', '.venv', 'bin', 'moto_server')
  return fs.existsSync(path.join(__dirname, '..', '.venv')) ? venv : 'moto_server'
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

async function startMoto() {
  const port = await freePort()
  const child = spawn(motoCommand(), ['-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const spawnError = new Promise((resolve) => child.once('error', resolve))
  const endpoint = `http://127.0.0.1:${port}`
  for (let attempt = 0; attempt < 150; attempt++) {
    const failure = await Promise.race([spawnError, exited, sleep(100).then(() => undefined)])
    if (failure !== undefined) throw new Error(`moto_server did not start (${motoCommand()}): ${failure} ${stderr}`)
    try {
      await fetch(`${endpoint}/moto-api/`)
      return { endpoint, stop: () => (child.exitCode === null ? (child.kill(), exited) : undefined) }
    } catch {
      // not listening yet
    }
  }
  child.kill()
  throw new Error(`moto_server did not answer within 15 s: ${stderr}`)
}

const MOTO_DISTRIBUTION = `<?xml version="1.0" encoding="UTF-8"?>
<DistributionConfig xmlns="${NAMESPACE}">
  <CallerReference>fake-cloudfront-cross-check</CallerReference>
  <Origins><Quantity>1</Quantity><Items><Origin><Id>origin</Id><DomainName>origin.example.com</DomainName>
    <CustomOriginConfig><HTTPPort>80</HTTPPort><HTTPSPort>443</HTTPSPort><OriginProtocolPolicy>https-only</OriginProtocolPolicy></CustomOriginConfig>
  </Origin></Items></Origins>
  <DefaultCacheBehavior><TargetOriginId>origin</TargetOriginId><ViewerProtocolPolicy>redirect-to-https</ViewerProtocolPolicy>
    <ForwardedValues><QueryString>false</QueryString><Cookies><Forward>none</Forward></Cookies></ForwardedValues><MinTTL>0</MinTTL>
  </DefaultCacheBehavior>
  <Comment></Comment><Enabled>true</Enabled>
</DistributionConfig>`

/** Asserts that every element of `expected`, in order and nested alike, is present in `actual`. */
function assertCovers(expected, actual, where = expected.name) {
  assert.equal(actual.name, expected.name, where)
  let from = 0
  for (const child of expected.children) {
    const index = actual.children.findIndex((c, i) => i >= from && c.name === child.name)
    assert.notEqual(index, -1, `${where}/${child.name} missing or out of order`)
    assertCovers(child, actual.children[index], `${where}/${child.name}`)
    from = index + 1
  }
}

describe('fake CloudFront answers like moto', () => {
  let moto
  let cf
  let motoDist
  before(async () => {
    moto = await startMoto()
    const created = await call(moto.endpoint, 'POST', `${API}/distribution`, MOTO_DISTRIBUTION)
    assert.equal(created.status, 201, created.text)
    motoDist = textAt(created.xml, 'Id')
    cf = await startFakeCloudFront({ distributions: [motoDist] })
  })
  after(async () => {
    await cf?.stop()
    await moto?.stop()
  })

  const paths = ['/index.html', '/img/*', '/a b?x=1&y=2']

  test('CreateInvalidation: same status, headers and XML structure', async () => {
    const fromMoto = await createInvalidation(moto.endpoint, paths, 'cross-1', { dist: motoDist })
    const fromFake = await createInvalidation(cf.endpoint, paths, 'cross-1', { dist: motoDist })
    assert.equal(fromFake.status, fromMoto.status)
    for (const header of ['location', 'x-amzn-requestid', 'content-type']) {
      assert.ok(fromMoto.headers.get(header), `moto sends ${header}`)
      assert.ok(fromFake.headers.get(header), `fake sends ${header}`)
    }
    assert.equal(fromFake.headers.get('etag'), fromMoto.headers.get('etag'))
    const location = (answer) => answer.headers.get('location').replace(textAt(answer.xml, 'Id'), '{Id}')
    assert.equal(location(fromFake), location(fromMoto))
    assert.equal(fromFake.xml.attributes.xmlns, fromMoto.xml.attributes.xmlns)
    assert.deepEqual(structure(fromFake.xml), structure(fromMoto.xml))
    for (const names of [['InvalidationBatch', 'CallerReference'], ['InvalidationBatch', 'Paths', 'Quantity']]) {
      assert.equal(textAt(fromFake.xml, ...names), textAt(fromMoto.xml, ...names))
    }
    assert.deepEqual(pathItems(fromFake.xml), pathItems(fromMoto.xml))
    // moto says 'COMPLETED'; CloudFront, and the fake, say 'Completed' or 'InProgress'.
    assert.equal(textAt(fromMoto.xml, 'Status').toLowerCase(), 'completed')
    assert.ok(['InProgress', 'Completed'].includes(textAt(fromFake.xml, 'Status')))
  })

  test('GetInvalidation: same status and XML structure', async () => {
    const motoId = textAt((await createInvalidation(moto.endpoint, paths, 'cross-2', { dist: motoDist })).xml, 'Id')
    const fakeId = textAt((await createInvalidation(cf.endpoint, paths, 'cross-2', { dist: motoDist })).xml, 'Id')
    const fromMoto = await call(moto.endpoint, 'GET', `${API}/distribution/${motoDist}/invalidation/${motoId}`)
    const fromFake = await call(cf.endpoint, 'GET', `${API}/distribution/${motoDist}/invalidation/${fakeId}`)
    assert.equal(fromFake.status, fromMoto.status)
    assert.ok(fromMoto.headers.get('x-amzn-requestid') && fromFake.headers.get('x-amzn-requestid'))
    assert.equal(fromFake.xml.attributes.xmlns, fromMoto.xml.attributes.xmlns)
    assert.deepEqual(structure(fromFake.xml), structure(fromMoto.xml))
  })

  test('ListInvalidations: every element moto sends, in the same places', async () => {
    const fromMoto = await call(moto.endpoint, 'GET', `${API}/distribution/${motoDist}/invalidation`)
    const fromFake = await call(cf.endpoint, 'GET', `${API}/distribution/${motoDist}/invalidation`)
    assert.equal(fromFake.status, fromMoto.status)
    assert.equal(textAt(fromFake.xml, 'Quantity'), textAt(fromMoto.xml, 'Quantity'))
    assertCovers(fromMoto.xml, fromFake.xml)
  })

  test('NoSuchDistribution: same status and error structure', async () => {
    const fromMoto = await createInvalidation(moto.endpoint, paths, 'cross-3', { dist: 'ENOSUCHDIST' })
    const fromFake = await createInvalidation(cf.endpoint, paths, 'cross-3', { dist: 'ENOSUCHDIST' })
    assertError(fromMoto, 404, 'NoSuchDistribution')
    assertError(fromFake, 404, 'NoSuchDistribution')
    assert.deepEqual(structure(fromFake.xml), structure(fromMoto.xml))
  })
})
