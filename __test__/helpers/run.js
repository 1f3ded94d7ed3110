'use strict'

// Runs a node script as a user would, with exactly the environment given (plus PATH).

const { spawn } = require('node:child_process')

const RUN_TIMEOUT_MS = 60_000

/** Runs `node script ...args` with `env` (plus PATH) and `input` on stdin; resolves `{ code, stdout, stderr }`. */
function runNode (script, args = [], { env = {}, input = '' } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      env: { PATH: process.env.PATH, ...env },
      stdio: ['pipe', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => { stdout += c })
    child.stderr.on('data', (c) => { stderr += c })
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (signal) reject(new Error(`${script} ${args.join(' ')} killed by ${signal}\n${stdout}\n${stderr}`))
      else resolve({ code, stdout, stderr })
    })
    child.stdin.end(input)
  })
}

module.exports = { runNode }
