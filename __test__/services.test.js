'use strict'

// The test services themselves: a real redis-server and a real moto answer as
// the other tests expect.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')

const {
  startRedis,
  startMoto,
  freePort,
  awsTestEnv,
  useAwsTestEnv,
  RedisReplyError
} = require('./helpers/services')
const { parseXml, textAt, CloudFrontApiError } = require('./helpers/moto')

function portAccepts (port) {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host: '127.0.0.1', port })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

describe('freePort', () => {
  test('hands out distinct loopback ports nobody listens on', async () => {
    const a = await freePort()
    const b = await freePort()
    assert.notEqual(a, b)
    assert.equal(await portAccepts(a), false)
  })
})

describe('redis-server', () => {
  let redis
  before(async () => { redis = await startRedis() })
  after(async () => { await redis?.stop() })

  test('answers PING at its url', async () => {
    assert.equal(redis.url, `redis://127.0.0.1:${redis.port}`)
    assert.equal(await redis.client.command('PING'), 'PONG')
  })

  test('the raw client reads every reply type', async () => {
    const { command } = redis.client
    assert.equal(await command('SET', 'greeting', 'héllo wörld'), 'OK')
    assert.equal(await command('GET', 'greeting'), 'héllo wörld')
    assert.equal(await command('GET', 'missing'), null)
    assert.equal(await command('ZADD', 'z', 2, 'b', 1, 'a'), 2)
    assert.deepEqual(await command('ZRANGE', 'z', 0, -1, 'WITHSCORES'), ['a', '1', 'b', '2'])
    assert.equal(await command('SET', 'empty', ''), 'OK')
    assert.equal(await command('GET', 'empty'), '')
    const [cursor, keys] = await command('SCAN', 0, 'COUNT', 1000)
    assert.equal(cursor, '0')
    assert.deepEqual(keys.sort(), ['empty', 'greeting', 'z'])
    await assert.rejects(command('INCR', 'greeting'), (error) => {
      assert.ok(error instanceof RedisReplyError)
      assert.equal(error.code, 'ERR')
      return true
    })
    assert.match(await command('INFO', 'memory'), /used_memory:\d+/)
  })

  test('pipelined commands get their own replies, in order', async () => {
    const replies = await Promise.all(
      Array.from({ length: 200 }, (_, i) => redis.client.command('INCRBY', 'counter', i))
    )
    assert.equal(replies.at(-1), (199 * 200) / 2)
  })

  test('persists nothing: a restart comes back empty on the same port', async () => {
    const port = redis.port
    await redis.client.command('SET', 'before-restart', '1')
    const oldPid = redis.pid
    await redis.restart()
    assert.equal(redis.port, port)
    assert.notEqual(redis.pid, oldPid)
    assert.equal(await redis.client.command('PING'), 'PONG')
    assert.equal(await redis.client.command('EXISTS', 'before-restart'), 0)
    assert.equal(await redis.client.command('CONFIG', 'GET', 'appendonly').then((r) => r[1]), 'no')
    assert.equal(await redis.client.command('CONFIG', 'GET', 'save').then((r) => r[1]), '')
  })

  test('a kill is seen by connected clients; restart recovers', async () => {
    await redis.kill()
    assert.equal(await portAccepts(redis.port), false)
    await assert.rejects(redis.client.command('PING'))
    await redis.restart()
    assert.equal(await redis.client.command('PING'), 'PONG')
  })

  test('two servers run side by side', async () => {
    const other = await startRedis()
    try {
      assert.notEqual(other.port, redis.port)
      await other.client.command('SET', 'only-here', '1')
      assert.equal(await redis.client.command('EXISTS', 'only-here'), 0)
    } finally {
      await other.stop()
    }
    assert.equal(await portAccepts(other.port), false)
  })
})

describe('moto (CloudFront)', () => {
  let moto
  before(async () => { moto = await startMoto() })
  after(async () => { await moto?.stop() })

  test('creates distributions with custom and S3 origins', async () => {
    const custom = await moto.createDistribution({ originDomain: 'origin.example.com' })
    assert.match(custom.id, /^[A-Z0-9]+$/)
    assert.match(custom.domainName, /\.cloudfront\.net$/)
    const s3 = await moto.createDistribution({ originDomain: 'assets.s3.amazonaws.com', s3: true })
    assert.notEqual(s3.id, custom.id)
    await assert.rejects(
      moto.createDistribution({ originDomain: 'origin.example.com', s3: true }),
      (error) => error instanceof CloudFrontApiError && error.code === 'InvalidArgument'
    )
  })

  test('a raw CreateInvalidation comes back whole from GetInvalidation', async () => {
    const { id: distId } = await moto.createDistribution({ originDomain: 'origin.example.com' })
    const paths = ['/index.html', '/caf%C3%A9.html', '/search?q=a&b=c', '/images/*', '/<raw é>']
    const body = '<?xml version="1.0" encoding="UTF-8"?>' +
      '<InvalidationBatch xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">' +
      `<Paths><Quantity>${paths.length}</Quantity><Items>` +
      '<Path>/index.html</Path><Path>/caf%C3%A9.html</Path><Path>/search?q=a&amp;b=c</Path>' +
      '<Path>/images/*</Path><Path>/&lt;raw é&gt;</Path>' +
      '</Items></Paths><CallerReference>self-test-1</CallerReference></InvalidationBatch>'
    const created = await moto.request('POST', `/2020-05-31/distribution/${distId}/invalidation`, body)
    assert.equal(created.status, 201)
    const invalidationId = textAt(created.xml, 'Id')

    const got = await moto.getInvalidation(distId, invalidationId)
    assert.equal(got.id, invalidationId)
    assert.equal(got.callerReference, 'self-test-1')
    assert.deepEqual(got.paths, paths) // moto keeps paths byte for byte, escapes included
    assert.equal(got.status, 'COMPLETED')

    const listed = await moto.listInvalidations(distId)
    assert.deepEqual(listed.map((i) => i.id), [invalidationId])
    assert.deepEqual(await moto.allInvalidatedPaths(distId), [
      { id: invalidationId, callerReference: 'self-test-1', paths }
    ])
  })

  test('lists every invalidation across pages, oldest first', async () => {
    const { id: distId } = await moto.createDistribution({ originDomain: 'origin.example.com' })
    const made = []
    for (let i = 0; i < 105; i++) {
      made.push(await moto.createInvalidation(distId, [`/page-${i}`], `ref-${i}`))
    }
    const all = await moto.allInvalidatedPaths(distId)
    assert.equal(all.length, 105)
    assert.deepEqual(all.map((i) => i.callerReference), made.map((_, i) => `ref-${i}`))
    assert.deepEqual(all.flatMap((i) => i.paths), made.map((_, i) => `/page-${i}`))
  })

  test('an unknown distribution is NoSuchDistribution', async () => {
    await assert.rejects(moto.createInvalidation('E0000000000000', ['/a']), (error) => {
      assert.equal(error.status, 404)
      assert.equal(error.code, 'NoSuchDistribution')
      return true
    })
  })

  test('reset forgets every distribution', async () => {
    await moto.createDistribution({ originDomain: 'origin.example.com' })
    await moto.reset()
    const { xml } = await moto.request('GET', '/2020-05-31/distribution')
    assert.equal(textAt(xml, 'Quantity'), '0')
  })
})

describe('helpers', () => {
  test('parseXml decodes entities, CDATA and namespaces', () => {
    const root = parseXml(
      '<?xml version="1.0"?><!-- c --><a:Root xmlns:a="x"><a:V>1 &amp; 2 &#233;&#x41;</a:V>' +
      '<W><![CDATA[<raw>]]></W><E/></a:Root>'
    )
    assert.equal(root.name, 'Root')
    assert.equal(textAt(root, 'V'), '1 & 2 éA')
    assert.equal(textAt(root, 'W'), '<raw>')
    assert.equal(textAt(root, 'E'), '')
    assert.throws(() => parseXml('<a><b></a>'))
  })

  test('useAwsTestEnv sets dummy credentials and restores the environment', () => {
    process.env.AWS_PROFILE = 'someone'
    const restore = useAwsTestEnv()
    try {
      assert.equal(process.env.AWS_ACCESS_KEY_ID, awsTestEnv.AWS_ACCESS_KEY_ID)
      assert.equal(process.env.AWS_PROFILE, undefined)
    } finally {
      restore()
    }
    assert.equal(process.env.AWS_PROFILE, 'someone')
    delete process.env.AWS_PROFILE
  })
})
