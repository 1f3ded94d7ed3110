'use strict'

// A separate sender process: `node sender.js '<options JSON>'` creates a tracker, sends, and prints the report (or the
// error) as one JSON line. Used to race senders and to kill one mid-send.

const createTracker = require('../..')

const options = JSON.parse(process.argv[2])
const tracker = createTracker({ ...options, logger: false })
tracker.sendInvalidation()
  .then((report) => { process.stdout.write(JSON.stringify({ report }) + '\n') })
  .catch((err) => { process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message }, report: err.report }) + '\n') })
