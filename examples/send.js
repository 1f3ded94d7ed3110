'use strict'

// What `npm run invalidate` runs in an app: sends every URL the app's servers tracked into Redis to CloudFront.
// The successor of the original package's Cakefile task (`cake invalidateCF`); on Heroku:
//   heroku run npm run invalidate --app your-app-name
// with "scripts": { "invalidate": "node send.js" }. The CLI does the same with no file at all:
// "scripts": { "invalidate": "cf-invalidation-tracker send" }.
//
// In your app, require('cf-invalidation-tracker') where this file requires '..'.

const createTracker = require('..')

const env = process.env
const redisUrl = env.REDIS_URL || env.REDISTOGO_URL

if (!redisUrl) {
  console.log('No REDIS_URL (or REDISTOGO_URL): nothing tracked, nothing to send.')
} else {
  const invl = createTracker({
    cf: {
      dist: env.CF_DIST,
      // The original's variables; without them the AWS SDK's default chain (AWS_ACCESS_KEY_ID, roles...) is used.
      access_key: env.AWS_ACCESS_KEY,
      secret_key: env.AWS_SECRET_KEY,
      endpoint: env.AWS_ENDPOINT_URL_CLOUDFRONT || env.AWS_ENDPOINT_URL
    },
    redis: { url: redisUrl }
  })

  invl.sendInvalidation({ wait: process.argv.includes('--wait') }).then(
    (report) => {
      for (const b of report.batches) console.log(`Invalidation ${b.id}: ${b.paths.length} paths, ${b.status}`)
      console.log(`${report.paths} paths sent; estimated cost $${report.estimatedCostUsd.toFixed(2)}`)
    },
    () => {
      // The tracker's logger (console) has said why. Whatever CloudFront did not accept stays tracked: the next
      // run sends it.
      process.exitCode = 1
    }
  )
}
