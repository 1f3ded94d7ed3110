'use strict'

// The Redis store over TLS (rediss://): a real redis-server listening for TLS with a certificate of a test authority,
// one that asks for no client certificate and one that requires it; moto as CloudFront.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const createTracker = require('..')
const { startRedis, startMoto, useAwsTestEnv, tlsCertificates, awsTestEnv } = require('./helpers/services')
const { failsInRedis } = require('./helpers/env')
const { runNode } = require('./helpers/run')

const BIN = path.join(__dirname, '..', 'bin', 'cf-invalidation-tracker.js')

describe('Redis over TLS', () => {
  let redis // TLS, no client certificate asked for
  let mutual // TLS, a client certificate required
  let moto
  let restoreEnv
  let certs
  before(async () => {
    restoreEnv = useAwsTestEnv()
    certs = tlsCertificates()
    ;[redis, mutual, moto] = await Promise.all([
      startRedis({ tls: { authClients: 'no' } }),
      startRedis({ tls: { authClients: 'yes' } }),
      startMoto()
    ])
  })
  after(async () => {
    await Promise.allSettled([redis?.stop(), mutual?.stop(), moto?.stop()])
    restoreEnv?.()
  })

  const tracker = (dist, redisOptions) => createTracker({ cf: { dist, endpoint: moto.endpoint }, redis: redisOptions, logger: false })
  const tracked = (server) => server.client.command('ZRANGE', '{cfit}:urls', 0, -1)
  async function received (dist) {
    return (await moto.allInvalidatedPaths(dist)).flatMap((i) => i.paths).sort()
  }

  test('with the authority given, URLs are tracked over TLS and a send invalidates them on CloudFront', async () => {
    const { id: dist } = await moto.createDistribution({ originDomain: 'origin.example.com' })
    const invl = tracker(dist, { url: redis.tlsUrl, tls: { ca: certs.ca }, prefix: 'tls-a' })
    try {
      await Promise.all(['/a.html', '/b.css', '/c/d.js?v=2'].map((u) => invl.storeUrl(u)))
      assert.deepEqual((await redis.client.command('ZRANGE', '{tls-a}:urls', 0, -1)).sort(), ['/a.html', '/b.css', '/c/d.js?v=2'])
      const report = await invl.sendInvalidation()
      assert.equal(report.paths, 3)
      assert.deepEqual(await received(dist), ['/a.html', '/b.css', '/c/d.js?v=2'])
      assert.deepEqual(await redis.client.command('ZRANGE', '{tls-a}:urls', 0, -1), [])
    } finally {
      await invl.disconnect()
    }
  })

  test('the original { host, port } form and a redis:// URL take TLS from tls, and a Buffer or an array of authorities',
    async () => {
      const forms = [
        { host: '127.0.0.1', port: redis.tlsPort, tls: { ca: Buffer.from(certs.ca) }, prefix: 'tls-b' },
        { url: `redis://127.0.0.1:${redis.tlsPort}`, tls: { ca: [certs.otherCa, certs.ca] }, prefix: 'tls-b' }
      ]
      for (const [i, form] of forms.entries()) {
        const invl = tracker('E1', form)
        try {
          await invl.storeUrl(`/form-${i}.html`)
        } finally {
          await invl.disconnect()
        }
      }
      assert.deepEqual(await redis.client.command('ZRANGE', '{tls-b}:urls', 0, -1), ['/form-0.html', '/form-1.html'])
    })

  test('a server whose certificate no trusted authority signed is refused: the write fails with that reason, nothing is written, nothing is unhandled',
    async () => {
      const refusals = [
        { url: redis.tlsUrl, tls: { ca: certs.otherCa }, prefix: 'tls-c' },
        // Only the public authorities: the test authority is not one of them.
        { url: redis.tlsUrl, tls: true, prefix: 'tls-c' },
        { url: redis.tlsUrl, prefix: 'tls-c' }
      ]
      for (const form of refusals) await failsInRedis(tracker('E1', form), { matches: /certificate.*UnknownIssuer/ })
      assert.equal(await redis.client.command('EXISTS', '{tls-c}:urls'), 0)
    })

  test('mutual TLS: the client certificate is presented when given; without it the server refuses and the write fails with that reason',
    async () => {
      const { id: dist } = await moto.createDistribution({ originDomain: 'origin.example.com' })
      const withCert = tracker(dist, { url: mutual.tlsUrl, tls: { ca: certs.ca, cert: certs.cert, key: Buffer.from(certs.key) } })
      try {
        await withCert.storeUrl('/mutual.html')
        assert.deepEqual(await tracked(mutual), ['/mutual.html'])
        assert.equal((await withCert.sendInvalidation()).paths, 1)
        assert.deepEqual(await received(dist), ['/mutual.html'])
      } finally {
        await withCert.disconnect()
      }

      await failsInRedis(tracker(dist, { url: mutual.tlsUrl, tls: { ca: certs.ca } }), { matches: /CertificateRequired/ })
      assert.deepEqual(await tracked(mutual), [])
    })

  test('a certificate nobody vouches for (Heroku Redis\'s) is accepted with tls.rejectUnauthorized false or a #insecure URL, and only then',
    async () => {
      const { id: dist } = await moto.createDistribution({ originDomain: 'origin.example.com' })
      const forms = [
        { url: redis.tlsUrl, tls: { rejectUnauthorized: false }, prefix: 'tls-i' },
        { url: `${redis.tlsUrl}#insecure`, prefix: 'tls-i' },
        { host: '127.0.0.1', port: redis.tlsPort, tls: { rejectUnauthorized: false }, prefix: 'tls-i' }
      ]
      for (const [i, form] of forms.entries()) {
        const invl = tracker(dist, form)
        try {
          await invl.storeUrl(`/unverified-${i}.html`)
        } finally {
          await invl.disconnect()
        }
      }
      const expected = ['/unverified-0.html', '/unverified-1.html', '/unverified-2.html']
      assert.deepEqual(await redis.client.command('ZRANGE', '{tls-i}:urls', 0, -1), expected)
      const sender = tracker(dist, { url: redis.tlsUrl, tls: { rejectUnauthorized: false }, prefix: 'tls-i' })
      try {
        assert.equal((await sender.sendInvalidation()).paths, 3)
      } finally {
        await sender.disconnect()
      }
      assert.deepEqual(await received(dist), expected)

      // A client certificate is still presented.
      const withCert = tracker(dist, { url: mutual.tlsUrl, tls: { rejectUnauthorized: false, cert: certs.cert, key: certs.key }, prefix: 'tls-i' })
      try {
        await withCert.storeUrl('/unverified-mutual.html')
      } finally {
        await withCert.disconnect()
      }
      assert.deepEqual(await mutual.client.command('ZRANGE', '{tls-i}:urls', 0, -1), ['/unverified-mutual.html'])

      // Checked unless asked not to; a misspelt name is warned of, and leaves the check on.
      await failsInRedis(tracker(dist, { url: redis.tlsUrl, tls: { rejectUnauthorized: true }, prefix: 'tls-j' }), { matches: /UnknownIssuer/ })
      const warnings = []
      const logger = { info () {}, warn (m) { warnings.push(m) }, error () {} }
      const misspelt = createTracker({ cf: { dist, endpoint: moto.endpoint }, redis: { url: redis.tlsUrl, tls: { rejectunauthorized: false }, prefix: 'tls-j' }, logger })
      assert.deepEqual(warnings, ['cf-invalidation-tracker: unknown option options.redis.tls.rejectunauthorized ignored (did you mean rejectUnauthorized?)'])
      await failsInRedis(misspelt, { matches: /UnknownIssuer/ })
      assert.equal(await redis.client.command('EXISTS', '{tls-j}:urls'), 0)
      assert.throws(() => tracker(dist, { url: redis.tlsUrl, tls: { rejectUnauthorized: 'false' } }),
        { code: 'ERR_INVALID_ARG_TYPE', message: /options\.redis\.tls\.rejectUnauthorized/ })
    })

  test('bad TLS options are refused when the tracker is made, without showing a key', () => {
    const make = (tls) => () => tracker('E1', { url: 'rediss://127.0.0.1:1', tls })
    const garbledKey = certs.key.replace(/\n[A-Za-z0-9+/]{8}/, '\nAAAAAAAA')
    const refusals = [
      [{ tls: 'yes' }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.tls/],
      [{ tls: { ca: 42 } }, 'ERR_INVALID_ARG_TYPE', /options\.redis\.tls\.ca/],
      [{ tls: { ca: 'not a certificate' } }, 'ERR_INVALID_ARG_VALUE', /options\.redis\.tls\.ca.*PEM/],
      [{ tls: { ca: [] } }, 'ERR_INVALID_ARG_VALUE', /options\.redis\.tls\.ca.*PEM/],
      [{ tls: { key: certs.key } }, 'ERR_INVALID_ARG_TYPE', /both cert and key.*key but no cert/],
      [{ tls: { cert: certs.cert } }, 'ERR_INVALID_ARG_TYPE', /both cert and key.*cert but no key/],
      [{ tls: { ca: '-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n' } }, 'ERR_INVALID_ARG_VALUE', /the ca cannot be read: a section is not base64/],
      // A key from an environment variable with its line breaks written as \n: one line, a malformed BEGIN line.
      [{ tls: { cert: certs.cert, key: certs.key.split('\n').join('\\n') } }, 'ERR_INVALID_ARG_VALUE', /private key cannot be read: a BEGIN line is malformed/],
      [{ tls: { ca: certs.key } }, 'ERR_INVALID_ARG_VALUE', /ca has no certificate/],
      [{ tls: { cert: certs.key, key: certs.key } }, 'ERR_INVALID_ARG_VALUE', /client certificate has no certificate/],
      [{ tls: { cert: certs.cert, key: certs.cert } }, 'ERR_INVALID_ARG_VALUE', /private key/],
      [{ tls: { cert: certs.ca, key: certs.key } }, 'ERR_INVALID_ARG_VALUE', /cannot be used together.*KeyMismatch/],
      [{ tls: { cert: certs.cert, key: garbledKey } }, 'ERR_INVALID_ARG_VALUE', /cannot be used together/]
    ]
    const keyLines = certs.key.split('\n').filter((l) => /^[A-Za-z0-9+/=]{16,}$/.test(l))
    assert.ok(keyLines.length > 0)
    for (const [options, code, message] of refusals) {
      assert.throws(make(options.tls), (err) => {
        assert.equal(err.code, code, `${JSON.stringify(options).slice(0, 80)}: ${err.message}`)
        assert.match(err.message, message)
        for (const line of keyLines) assert.ok(!err.message.includes(line.slice(0, 16)), `key shown: ${err.message}`)
        assert.ok(err.message.length < 200 && !/\d+, \d+, \d+/.test(err.message), `PEM bytes shown: ${err.message}`)
        return true
      })
    }
  })

  test('the command line: --redis-ca, --redis-cert and --redis-key (or their variables) for a server that requires a client certificate',
    async () => {
      const { files } = certs
      const env = { ...awsTestEnv, REDIS_URL: mutual.tlsUrl, CF_DIST: 'E1' }
      const flags = ['--redis-ca', files.ca, '--redis-cert', files.cert, '--redis-key', files.key, '--prefix', 'tls-cli']
      const track = await runNode(BIN, ['track', '/cli.html', ...flags], { env })
      assert.equal(track.code, 0, track.stderr)
      const list = await runNode(BIN, ['list', '--prefix', 'tls-cli'],
        { env: { ...env, REDIS_TLS_CA_FILE: files.ca, REDIS_TLS_CERT_FILE: files.cert, REDIS_TLS_KEY_FILE: files.key } })
      assert.equal(list.code, 0, list.stderr)
      assert.equal(list.stdout, '/cli.html\n')
      assert.deepEqual(await mutual.client.command('ZRANGE', '{tls-cli}:urls', 0, -1), ['/cli.html'])

      const noKey = await runNode(BIN, ['list', '--redis-ca', files.ca, '--redis-cert', files.cert], { env })
      assert.equal(noKey.code, 2)
      assert.match(noKey.stderr, /^cf-invalidation-tracker: --redis-cert needs --redis-key/)
      const missing = await runNode(BIN, ['list', '--redis-ca', path.join(files.ca, 'nope')], { env })
      assert.equal(missing.code, 2)
      assert.match(missing.stderr, /^cf-invalidation-tracker: cannot read the --redis-ca file .*nope.*: ENOTDIR\n$/)
      const refused = await runNode(BIN, ['list', '--redis-ca', files.ca], { env })
      assert.equal(refused.code, 1)
      assert.equal(refused.stderr.trimEnd().split('\n').length, 1, refused.stderr)
      assert.match(refused.stderr, /CertificateRequired/)
    })

  test('the command line: --redis-insecure (or REDIS_TLS_INSECURE=1) for a certificate nobody vouches for, with a client certificate too',
    async () => {
      const { files } = certs
      const env = { ...awsTestEnv, REDIS_URL: redis.tlsUrl, CF_DIST: 'E1' }
      const track = await runNode(BIN, ['track', '/cli-insecure.html', '--redis-insecure', '--prefix', 'tls-k'], { env })
      assert.equal(track.code, 0, track.stderr)
      const list = await runNode(BIN, ['list', '--prefix', 'tls-k'], { env: { ...env, REDIS_TLS_INSECURE: '1' } })
      assert.equal(list.code, 0, list.stderr)
      assert.equal(list.stdout, '/cli-insecure.html\n')
      assert.deepEqual(await redis.client.command('ZRANGE', '{tls-k}:urls', 0, -1), ['/cli-insecure.html'])
      const mutualEnv = { ...env, REDIS_URL: mutual.tlsUrl }
      const withCert = await runNode(BIN, ['track', '/cli-insecure.html', '--redis-insecure', '--redis-cert', files.cert, '--redis-key', files.key, '--prefix', 'tls-k'], { env: mutualEnv })
      assert.equal(withCert.code, 0, withCert.stderr)
      assert.deepEqual(await mutual.client.command('ZRANGE', '{tls-k}:urls', 0, -1), ['/cli-insecure.html'])

      const checked = await runNode(BIN, ['list', '--prefix', 'tls-k'], { env })
      assert.equal(checked.code, 1)
      assert.match(checked.stderr, /UnknownIssuer/)
      const bad = await runNode(BIN, ['list'], { env: { ...env, REDIS_TLS_INSECURE: 'maybe' } })
      assert.equal(bad.code, 2)
      assert.match(bad.stderr, /REDIS_TLS_INSECURE must be 1 or 0/)
    })
})
