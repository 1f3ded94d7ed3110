'use strict'

// Child process: one sendInvalidation of what Redis holds, timed, and the process's peak RSS.
// Arguments (JSON): { redisUrl, endpoint, dist, batchSize }.

const { childMain, REPO_ROOT } = require('./lib')

childMain(async ({ redisUrl, endpoint, dist, batchSize }, ready) => {
  const createTracker = require(REPO_ROOT)
  const invl = createTracker({
    cf: { dist, endpoint, access_key: 'testing', secret_key: 'testing', region: 'us-east-1' },
    redis: { url: redisUrl },
    batchSize,
    logger: false
  })
  await ready()
  // RSS over time, to tell which phase of the send the peak belongs to.
  let rssPeak = 0
  let rssPeakAt = 0
  const startedAtMs = Date.now()
  const started = process.hrtime.bigint()
  const sampler = setInterval(() => {
    const rss = process.memoryUsage.rss()
    if (rss > rssPeak) {
      rssPeak = rss
      rssPeakAt = Number(process.hrtime.bigint() - started) / 1e9
    }
  }, 20)
  let report
  try {
    report = await invl.sendInvalidation()
  } finally {
    clearInterval(sampler)
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  return {
    seconds,
    startedAtMs,
    rssPeakAt,
    maxRssKb: process.resourceUsage().maxRSS,
    paths: report.paths,
    batches: report.batches.length,
    kept: report.kept
  }
})
