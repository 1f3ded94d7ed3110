'use strict'

// S3 events -> invalidations on the distribution whose origin is the bucket, against moto.

const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')

const createTracker = require('..')
const { invalidateS3Event, findDistributionByOrigin } = createTracker
const { isBucketOrigin, keyToPath } = require('../lib/s3')
const { startMoto, useAwsTestEnv } = require('./helpers/services')
const { startFakeCloudFront } = require('./helpers/fake-cloudfront')

/** An S3 notification record, as S3 sends it (the key URL-encoded, '+' for space). */
function record (bucket, key, eventName = 'ObjectCreated:Put') {
  return {
    eventVersion: '2.1',
    eventSource: 'aws:s3',
    awsRegion: 'us-east-1',
    eventTime: new Date().toISOString(),
    eventName,
    s3: { s3SchemaVersion: '1.0', bucket: { name: bucket, arn: `arn:aws:s3:::${bucket}` }, object: { key, size: 1 } }
  }
}

describe('S3 origins and keys', () => {
  test('recognises the S3 endpoints of a bucket, and only that bucket', () => {
    for (const domain of [
      'mybucket.s3.amazonaws.com',
      'mybucket.s3.eu-west-1.amazonaws.com',
      'mybucket.s3-eu-west-1.amazonaws.com',
      'mybucket.s3.dualstack.us-east-2.amazonaws.com',
      'mybucket.s3-website-us-east-1.amazonaws.com',
      'mybucket.s3-website.eu-central-1.amazonaws.com',
      'mybucket.s3.cn-north-1.amazonaws.com.cn',
      'MyBucket.S3.amazonaws.com'
    ]) assert.ok(isBucketOrigin(domain, 'mybucket'), domain)
    for (const domain of [
      'otherbucket.s3.amazonaws.com',
      'xmybucket.s3.amazonaws.com',
      'mybucket.example.com',
      'mybucket.s3.x.s3.amazonaws.com',
      'www.mybucket.s3.amazonaws.com',
      'mybucket.s3.amazonaws.com.evil.com'
    ]) assert.ok(!isBucketOrigin(domain, 'mybucket'), domain)
    assert.ok(isBucketOrigin('my.dotted.bucket.s3.amazonaws.com', 'my.dotted.bucket'))
    assert.ok(!isBucketOrigin('myxdotted.bucket.s3.amazonaws.com', 'my.dotted.bucket'))
  })

  test('keys decode from the event form into paths that keep every character of the key', () => {
    assert.equal(keyToPath('a+b%C3%A9.jpg'), '/a%20bé.jpg')
    assert.equal(keyToPath('dir/100%25+off%3F.html'), '/dir/100%25%20off%3F.html')
    assert.equal(keyToPath('a%2Bb%23c'), '/a+b%23c')
    // Spaces and control characters at either end are the key's, not padding a URL parser would trim.
    assert.equal(keyToPath('report.pdf+'), '/report.pdf%20')
    assert.equal(keyToPath('+'), '/%20')
    assert.equal(keyToPath('notes%09'), '/notes%09')
    assert.equal(keyToPath('%7F+x'), '/%7F%20x')
    const t = createTracker({ cf: { dist: 'E' }, store: 'memory://', logger: false })
    assert.equal(t.normalize(keyToPath('a+b%C3%A9.jpg')), '/a%20b%C3%A9.jpg')
    assert.equal(t.normalize(keyToPath('dir/100%25+off%3F.html')), '/dir/100%25%20off%3F.html')
  })
})

describe('invalidateS3Event and findDistributionByOrigin (moto)', () => {
  let moto, restoreEnv, photos, site, other, staged
  const cf = () => ({ endpoint: moto.endpoint })
  const received = async (id) => (await moto.allInvalidatedPaths(id)).flatMap((i) => i.paths).sort()

  before(async () => {
    restoreEnv = useAwsTestEnv()
    moto = await startMoto()
    photos = (await moto.createDistribution({ originDomain: 'mybucket.s3.amazonaws.com', s3: true })).id
    site = (await moto.createDistribution({ originDomain: 'site-bucket.s3.us-east-1.amazonaws.com', s3: true })).id
    other = (await moto.createDistribution({ originDomain: 'www.example.com' })).id
    staged = (await moto.createDistribution({ originDomain: 'stage-bucket.s3.amazonaws.com', originPath: '/production', s3: true })).id
  })
  after(async () => {
    await moto?.stop()
    restoreEnv?.()
  })

  test('findDistributionByOrigin finds the bucket\'s distribution, without a dist of its own', async () => {
    assert.equal(await findDistributionByOrigin('mybucket', { cf: cf() }), photos)
    assert.equal(await findDistributionByOrigin('site-bucket', { cf: cf() }), site)
    await assert.rejects(findDistributionByOrigin('nobody', { cf: cf() }), (err) => {
      assert.equal(err.code, 'ERR_CFIT_NO_DISTRIBUTION')
      assert.match(err.message, /"nobody"/)
      return true
    })
    await assert.rejects(findDistributionByOrigin('', { cf: cf() }), { code: 'ERR_INVALID_ARG_TYPE' })
    await assert.rejects(findDistributionByOrigin('mybucket'), { code: 'ERR_INVALID_ARG_TYPE' })
  })

  test('an S3 record invalidates its decoded key on the bucket\'s distribution only', async () => {
    const reports = await invalidateS3Event({ Records: [record('mybucket', 'a+b%C3%A9.jpg')] }, { cf: cf(), logger: false })
    assert.equal(reports.length, 1)
    assert.equal(reports[0].distribution, photos)
    assert.deepEqual(reports[0].buckets, ['mybucket'])
    assert.equal(reports[0].paths, 1)
    assert.deepEqual(reports[0].batches.map((b) => b.paths), [['/a%20b%C3%A9.jpg']])
    assert.deepEqual(await received(photos), ['/a%20b%C3%A9.jpg'])
    assert.deepEqual(await received(site), [])
    assert.deepEqual(await received(other), [])
  })

  test('several buckets and event kinds, SNS- and SQS-wrapped records: one report per distribution', async () => {
    const before = { photos: await received(photos), site: await received(site) }
    const event = {
      Records: [
        record('mybucket', 'img/new+one.png', 'ObjectCreated:CompleteMultipartUpload'),
        record('mybucket', 'img/old.png', 'ObjectRemoved:Delete'),
        record('mybucket', 'img/ignored.png', 'ObjectRestore:Completed'),
        { EventSource: 'aws:sns', Sns: { Message: JSON.stringify({ Records: [record('site-bucket', 'docs/index.html')] }) } },
        { eventSource: 'aws:sqs', body: JSON.stringify({ Records: [record('site-bucket', 'app.js', 'ObjectCreated:Copy')] }) },
        // S3 -> SNS -> SQS: the SQS body is SNS's envelope.
        { eventSource: 'aws:sqs', body: JSON.stringify({ Type: 'Notification', Message: JSON.stringify({ Records: [record('mybucket', 'img/fanned+out.png')] }) }) },
        { eventSource: 'aws:sqs', body: JSON.stringify({ Service: 'Amazon S3', Event: 's3:TestEvent' }) }
      ]
    }
    const reports = await invalidateS3Event(event, { cf: cf(), logger: false, wait: true, indexDocument: 'index.html' })
    const byDist = Object.fromEntries(reports.map((r) => [r.distribution, r]))
    assert.deepEqual(Object.keys(byDist).sort(), [photos, site].sort())
    assert.ok(reports.every((r) => r.batches.every((b) => b.status === 'Completed' || b.status === 'COMPLETED')))
    const added = async (id, was) => (await received(id)).filter((p) => !was.includes(p))
    assert.deepEqual(await added(photos, before.photos), ['/img/fanned%20out.png', '/img/new%20one.png', '/img/old.png'])
    assert.deepEqual(await added(site, before.site), ['/app.js', '/docs', '/docs/', '/docs/index.html'])
  })

  test('EventBridge S3 events, direct or through SQS: created and deleted objects are sent; a key that reads otherwise decoded goes in both forms', async () => {
    const was = await received(photos)
    const bridged = (kind, key, bucket = 'mybucket') => ({
      version: '0', id: `id-${key}`, 'detail-type': kind, source: 'aws.s3', account: '123456789012', time: '2026-12-03T00:00:00Z',
      region: 'us-east-1', resources: [`arn:aws:s3:::${bucket}`],
      detail: { version: '0', bucket: { name: bucket }, object: { key, size: 5, sequencer: '617f08299329d189' }, reason: 'PutObject' }
    })
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    const direct = await invalidateS3Event(bridged('Object Created', 'img/bridged.jpg'), { cf: cf(), logger })
    assert.deepEqual(direct.map((r) => r.distribution), [photos])
    const queued = {
      Records: [
        { eventSource: 'aws:sqs', body: JSON.stringify(bridged('Object Deleted', 'img/gone+1.jpg')) },
        { eventSource: 'aws:sqs', body: JSON.stringify(bridged('Object Restore Completed', 'img/restored.jpg')) }
      ]
    }
    const reports = await invalidateS3Event(queued, { cf: cf(), logger })
    assert.deepEqual(reports.map((r) => r.distribution), [photos])
    const added = (await received(photos)).filter((p) => !was.includes(p))
    assert.deepEqual(added, ['/img/bridged.jpg', '/img/gone%201.jpg', '/img/gone+1.jpg'])
    // An event of another kind only is not sent, and is no wrong trigger.
    assert.deepEqual(await invalidateS3Event(bridged('Object Restore Completed', 'img/restored.jpg'), { cf: cf(), logger }), [])
    assert.deepEqual(warnings, [])
  })

  test('cf.dist skips the lookup; an unknown bucket rejects before anything is sent; no objects, no send', async () => {
    const reports = await invalidateS3Event({ Records: [record('whatever', 'x.css')] }, { cf: { ...cf(), dist: other }, logger: false })
    assert.equal(reports[0].distribution, other)
    assert.deepEqual(await received(other), ['/x.css'])

    const was = await received(photos)
    const event = { Records: [record('mybucket', 'never.jpg'), record('unknown-bucket', 'y.jpg')] }
    await assert.rejects(invalidateS3Event(event, { cf: cf(), logger: false }), { code: 'ERR_CFIT_NO_DISTRIBUTION', bucket: 'unknown-bucket' })
    assert.deepEqual(await received(photos), was)

    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    assert.deepEqual(await invalidateS3Event({ Records: [] }, { cf: cf(), logger }), [])
    // Not an S3 event (another EventBridge event, a wrong trigger): nothing sent, and it says so rather than pass for a
    // success.
    const scheduled = { source: 'aws.events', 'detail-type': 'Scheduled Event', detail: {} }
    assert.deepEqual(await invalidateS3Event(scheduled, { cf: cf(), logger }), [])
    assert.equal(warnings.length, 2)
    assert.match(warnings[1], /holds no S3 event/)
    assert.deepEqual(await received(photos), was)
    await assert.rejects(invalidateS3Event(null, { cf: cf() }), { code: 'ERR_INVALID_ARG_TYPE' })
  })

  test('an origin path is taken off the keys: read from CloudFront, or given with cf.dist; a key outside it is not sent', async () => {
    const listed = await createTracker({ cf: { ...cf(), dist: other }, store: 'memory://', logger: false }).listDistributions()
    const byId = Object.fromEntries(listed.map((d) => [d.id, d]))
    assert.deepEqual(byId[staged].originPaths, ['/production'])
    assert.deepEqual(byId[photos].originPaths, [''])
    assert.equal(await findDistributionByOrigin('stage-bucket', { cf: cf() }), staged)

    const event = {
      Records: [
        record('stage-bucket', 'production/img/a+b.jpg'),
        record('stage-bucket', 'production/'),
        record('stage-bucket', 'productionX/c.jpg'),
        record('stage-bucket', 'staging/img/a+b.jpg')
      ]
    }
    const [report] = await invalidateS3Event(event, { cf: cf(), logger: false })
    assert.equal(report.distribution, staged)
    assert.equal(report.paths, 2)
    assert.deepEqual(await received(staged), ['/', '/img/a%20b.jpg'])

    // With cf.dist, nothing is listed: the origin path is the caller's to give (and may be escaped).
    const was = await received(other)
    const given = { Records: [record('any', 'my+dir/app.js'), record('any', 'app.js')] }
    const [direct] = await invalidateS3Event(given, { cf: { ...cf(), dist: other }, originPath: '/my%20dir', logger: false })
    assert.equal(direct.paths, 1)
    assert.deepEqual((await received(other)).filter((p) => !was.includes(p)), ['/app.js'])

    // Only keys outside it: nothing to send, and nothing sent.
    const outside = await invalidateS3Event({ Records: [record('stage-bucket', 'staging/b.jpg')] }, { cf: cf(), logger: false })
    assert.deepEqual(outside.map((r) => [r.distribution, r.paths]), [[staged, 0]])
    assert.deepEqual(await received(staged), ['/', '/img/a%20b.jpg'])

    for (const [originPath, code, message] of [
      ['v2', 'ERR_INVALID_ARG_VALUE', /must start with '\/'/],
      ['/v2/', 'ERR_INVALID_ARG_VALUE', /not end with one/],
      [2, 'ERR_INVALID_ARG_TYPE', /originPath/]
    ]) {
      await assert.rejects(invalidateS3Event(given, { cf: { ...cf(), dist: other }, originPath, logger: false }), (err) => {
        assert.equal(err.code, code)
        assert.match(err.message, message)
        return true
      })
    }
    await assert.rejects(invalidateS3Event(given, { cf: cf(), originPath: '/v2', logger: false }),
      { code: 'ERR_INVALID_ARG_VALUE', message: /applies with options\.cf\.dist only/ })
    assert.deepEqual((await received(other)).filter((p) => !was.includes(p)), ['/app.js'], 'refused options sent nothing')
  })

  test('keys ending or made of spaces and control characters invalidate those objects, not their trimmed names', async () => {
    const was = await received(other)
    const event = { Records: [record('any', 'report.pdf+'), record('any', '+'), record('any', 'notes%09')] }
    const reports = await invalidateS3Event(event, { cf: { ...cf(), dist: other }, logger: false })
    assert.equal(reports[0].paths, 3)
    const added = (await received(other)).filter((p) => !was.includes(p))
    assert.deepEqual(added, ['/%20', '/notes%09', '/report.pdf%20'])
  })

  test('dryRun sends nothing and reports what would be sent; bad options are refused before CloudFront is called', async () => {
    const was = await received(photos)
    const warnings = []
    const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
    const event = { Records: [record('mybucket', 'dry.jpg'), record('mybucket', 'run.jpg')] }
    const [report] = await invalidateS3Event(event, { cf: cf(), logger, dryRun: true, origin_path: '/x' })
    assert.equal(report.distribution, photos)
    assert.equal(report.dryRun, true)
    assert.deepEqual(report.batches.flatMap((b) => b.paths).sort(), ['/dry.jpg', '/run.jpg'])
    assert.deepEqual(await received(photos), was, 'nothing was sent')
    // A misspelt name is warned of once, with the name it most likely meant, not once per distribution or send.
    assert.deepEqual(warnings, ['cf-invalidation-tracker: unknown option options.origin_path ignored (did you mean originPath?)'])

    // Refused before anything is looked up: CloudFront (here a server of ours recording requests) gets no call.
    const fake = await startFakeCloudFront({ distributions: [{ id: 'ES3OPTS', originDomain: 'opts-bucket.s3.amazonaws.com' }] })
    try {
      const opts = { Records: [record('opts-bucket', 'a.jpg')] }
      for (const [bad, code] of [[{ batchSize: 0 }, 'ERR_INVALID_ARG_VALUE'], [{ queryStrings: 'nope' }, 'ERR_INVALID_ARG_VALUE'],
        [{ dryRun: 'yes' }, 'ERR_INVALID_ARG_TYPE'], [{ wait: 1 }, 'ERR_INVALID_ARG_TYPE']]) {
        await assert.rejects(invalidateS3Event(opts, { cf: { endpoint: fake.endpoint }, logger: false, ...bad }), { code })
        // An event naming no object is checked alike.
        await assert.rejects(invalidateS3Event({ Records: [] }, { cf: { endpoint: fake.endpoint }, logger: false, ...bad }), { code })
      }
      assert.deepEqual(fake.requests, [])
    } finally {
      await fake.stop()
    }
  })

  test('a misspelt dryRun or wait is refused before anything is looked up or sent; other unknown names are warned of', async () => {
    const fake = await startFakeCloudFront({ distributions: [{ id: 'ES3MISSPELT', originDomain: 'misspelt-bucket.s3.amazonaws.com' }] })
    try {
      const event = { Records: [record('misspelt-bucket', 'a.jpg')] }
      for (const [name, meant] of [['dryrun', 'dryRun'], ['dry_run', 'dryRun'], ['DryRun', 'dryRun'], ['dryRUN', 'dryRun'],
        ['dry-run', 'dryRun'], ['waitt', 'wait'], ['Wait', 'wait']]) {
        for (const cf of [{ endpoint: fake.endpoint }, { endpoint: fake.endpoint, dist: 'ES3MISSPELT' }]) {
          await assert.rejects(invalidateS3Event(event, { cf, logger: false, [name]: true }), (err) => {
            assert.equal(err.code, 'ERR_INVALID_ARG_VALUE')
            assert.match(err.message, new RegExp(`has no option ${name} \\(did you mean ${meant}\\?`))
            return true
          })
        }
      }
      assert.deepEqual(fake.requests, [])
      // Another unknown name is warned of, and the send goes on.
      const warnings = []
      const logger = { info () {}, error () {}, warn: (m) => warnings.push(m) }
      const [report] = await invalidateS3Event(event, { cf: { endpoint: fake.endpoint }, logger, dryRun: true, retries: 3 })
      assert.deepEqual(report.batches.flatMap((b) => b.paths), ['/a.jpg'])
      assert.deepEqual(warnings, ['cf-invalidation-tracker: unknown option options.retries ignored'])
    } finally {
      await fake.stop()
    }
  })

  test('a failed send rejects with the CloudFront error and every report', async () => {
    const event = { Records: [record('mybucket', 'z.jpg')] }
    await assert.rejects(invalidateS3Event(event, { cf: { ...cf(), dist: 'NOSUCHDIST' }, logger: false }), (err) => {
      assert.equal(err.code, 'ERR_CFIT_CLOUDFRONT')
      assert.equal(err.reports.length, 1)
      assert.equal(err.reports[0].distribution, 'NOSUCHDIST')
      assert.equal(err.reports[0].kept, 1)
      return true
    })
  })
})

describe('a redelivered S3 event', () => {
  test('is not billed twice: batches accepted the first time come back under the same CallerReference', async () => {
    const restore = useAwsTestEnv()
    const fake = await startFakeCloudFront({ distributions: [{ id: 'ES3RETRY', originDomain: 'retry-bucket.s3.amazonaws.com' }] })
    try {
      const event = {
        Records: ['a.jpg', 'b.jpg', 'c.jpg'].map((key, i) => ({
          eventName: 'ObjectCreated:Put',
          eventTime: '2026-11-23T18:00:00.000Z',
          s3: { bucket: { name: 'retry-bucket' }, object: { key, sequencer: `00${i}` } }
        }))
      }
      const options = { cf: { endpoint: fake.endpoint }, batchSize: 1, logger: false }
      fake.fail('accessDenied', { after: 1 }) // the first batch goes through, then the handler fails
      await assert.rejects(invalidateS3Event(event, options), { code: 'ERR_CFIT_CLOUDFRONT' })
      const [report] = await invalidateS3Event(event, options) // Lambda's retry
      assert.equal(report.paths, 3)
      const invalidations = fake.invalidations('ES3RETRY')
      assert.equal(invalidations.length, 3, 'the first batch was not created again')
      assert.deepEqual(fake.pathsReceived('ES3RETRY').sort(), ['/a.jpg', '/b.jpg', '/c.jpg'])
      // A different event with the same keys is new work: invalidated again.
      const later = { Records: event.Records.map((r) => ({ ...r, eventTime: '2026-11-23T19:00:00.000Z' })) }
      await invalidateS3Event(later, options)
      assert.equal(fake.invalidations('ES3RETRY').length, 6)
    } finally {
      await fake.stop()
      restore()
    }
  })
})
