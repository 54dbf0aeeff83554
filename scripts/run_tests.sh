#!/usr/bin/env bash
# Run the test suite and fail if pytest did not reach its end (a native library that
# calls exit() would otherwise end the run with status 0 and no summary).
set -uo pipefail
cd "$(dirname "$0")/.."
marker=$(mktemp)
rm -f "$marker"
FEDPRESS_TEST_MARKER="$marker" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ ! -f "$marker" ]; then
  echo "!! the test process ended before pytest finished (rc=$rc): treating as a failure" >&2
  exit 1
fi
rm -f "$marker"
exit $rc
