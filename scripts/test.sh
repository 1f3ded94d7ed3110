#!/usr/bin/env bash
# The whole test suite, as `npm test` runs it:
#   1. installs the services the tests need (redis-server, moto) when missing;
#   2. builds the native addon (incrementally: at once when it is up to date);
#   3. runs the Rust unit tests (cargo test);
#   4. runs the JavaScript tests (node:test, __test__/**/*.test.js), one file at a time.
# Extra arguments go to `node --test`; when one of them names a file or folder,
# only that runs, e.g. `npm test -- __test__/services.test.js`; give options
# with their values as one argument: `--test-name-pattern=redis`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-services.sh

# Always: the JavaScript tests must not run against an addon older than the Rust source (a no-op build takes seconds).
echo "test: building the native addon (npm run build)"
npm run build

echo "test: cargo test"
cargo test

# Options go before file names: node stops reading options at the first file.
options=()
files=()
for arg in "$@"; do
  case "$arg" in
    -*) options+=("$arg") ;;
    *) files+=("$arg") ;;
  esac
done
if [ "${#files[@]}" -eq 0 ]; then
  while IFS= read -r file; do
    files+=("$file")
  done < <(find __test__ -path __test__/helpers -prune -o -type f -name '*.test.js' -print | LC_ALL=C sort)
fi

echo "test: node --test"
node --test --test-concurrency=1 ${options[@]+"${options[@]}"} "${files[@]}"
