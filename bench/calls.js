'use strict'

// Child process: times `n` storeUrl calls (the tracker) or `n` ZADDs (the node-redis baseline) until every call is
// in Redis. Arguments (JSON): { side: 'tracker'|'baseline', workload: 'zipf'|'unique', n, urlSpace, redisUrl,
// endpoint, dist, key, chunk, depth }.

const { childMain, drive, zipfRanks, catalogPath, uniquePath, flat, REPO_ROOT } = require('./lib')

childMain(async (args, ready) => {
  const { side, workload, n, urlSpace, redisUrl, endpoint, dist, key, chunk, depth } = args
  let urlOf
  let distinct
  if (workload === 'zipf') {
    const ranks = zipfRanks(n, urlSpace)
    const urls = Array.from({ length: urlSpace }, (_, k) => flat(catalogPath(k)))
    const seen = new Uint8Array(urlSpace)
    distinct = 0
    for (let i = 0; i < n; i++) {
      if (seen[ranks[i]] === 0) {
        seen[ranks[i]] = 1
        distinct++
      }
    }
    urlOf = (i) => urls[ranks[i]]
  } else {
    // Made before the clock starts, as the Zipf URLs are.
    const urls = Array.from({ length: n }, (_, i) => flat(uniquePath(i)))
    urlOf = (i) => urls[i]
    distinct = n
  }

  let call
  let finish
  let close
  if (side === 'tracker') {
    const createTracker = require(REPO_ROOT)
    const invl = createTracker({ cf: { dist, endpoint }, redis: { url: redisUrl }, logger: false })
    call = (i) => invl.storeUrl(urlOf(i))
    finish = () => invl.flush()
    close = () => invl.disconnect()
  } else {
    const { createClient } = require('redis')
    const client = createClient({ url: redisUrl })
    client.on('error', () => {})
    await client.connect()
    call = (i) => client.zAdd(key, { score: Infinity, value: urlOf(i) })
    close = () => client.close()
  }

  await ready()
  const started = process.hrtime.bigint()
  await drive(n, call, { chunk, depth, finish })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  await close()
  return { seconds, calls: n, distinct }
})
