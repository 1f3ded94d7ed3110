'use strict'

// Errors as Node shapes them: argument errors are TypeError/RangeError with Node's codes; every other error carries
// a stable `code` (listed in the README).

const SEP = '\u0001'

function argType (name, expected, actual) {
  const err = new TypeError(`The "${name}" argument must be ${expected}. Received ${describe(actual)}`)
  err.code = 'ERR_INVALID_ARG_TYPE'
  return err
}

function argValue (name, reason, actual) {
  const err = new RangeError(`The "${name}" argument ${reason}. Received ${describe(actual)}`)
  err.code = 'ERR_INVALID_ARG_VALUE'
  return err
}

/**
 * Hides the credentials of a URL (`scheme://user:pass@host` becomes `scheme://***@host`), also of one given without
 * its scheme (`user:pass@host`, a slip the URL check then quotes).
 */
function redact (text) {
  const shown = text.replace(/\/\/\S*@/g, '//***@')
  return /^\S*:\/\//.test(shown) ? shown : shown.replace(/^\S*@/, '***@')
}

function describe (value) {
  if (value === null) return 'null'
  if (typeof value === 'string') {
    const shown = redact(value)
    return `type string (${JSON.stringify(shown.length > 40 ? shown.slice(0, 40) + '…' : shown)})`
  }
  if (typeof value === 'function') return `function ${value.name || '<anonymous>'}`
  if (typeof value === 'object') return value.constructor && value.constructor.name ? `an instance of ${value.constructor.name}` : 'an object'
  return `type ${typeof value} (${String(value)})`
}

/** Turns an error from the native layer ("CODE\u0001message") into an Error with `code`. */
function fromNative (err) {
  if (!err || typeof err.message !== 'string' || !err.message.includes(SEP)) return err
  return fromCoded(err.message)
}

/** Builds the error for a "CODE\u0001message" string. */
function fromCoded (coded) {
  const i = coded.indexOf(SEP)
  const code = coded.slice(0, i)
  const message = coded.slice(i + 1)
  const Ctor = code === 'ERR_INVALID_ARG_VALUE' ? RangeError : code === 'ERR_INVALID_ARG_TYPE' ? TypeError : Error
  const err = new Ctor(message)
  err.code = code
  return err
}

module.exports = { argType, argValue, fromNative, fromCoded, redact, describe }
