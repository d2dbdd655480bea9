#!/usr/bin/env bash
# Makes a headless browser available to the console's browser test: installs Debian's
# `chromium` and `chromium-driver` when they are missing and prints
# `export DCRON_TEST_CHROMEDRIVER=...` and `export DCRON_TEST_CHROMIUM=...` on stdout
# (scripts/test evals it). Nothing is started here: the test starts chromedriver itself on a
# free port. Already set variables are respected as they are.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

apt_install chromium chromium-driver || log "chromium: could not install chromium/chromium-driver (the browser test will skip, or fail under DCRON_TEST_REQUIRE=1)"

driver="${DCRON_TEST_CHROMEDRIVER:-$(command -v chromedriver || echo /usr/bin/chromedriver)}"
browser="${DCRON_TEST_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}"
if [ -x "$driver" ] && [ -x "$browser" ]; then
  log "chromium: $("$browser" --version 2>/dev/null || echo "$browser"), driver $driver"
  printf 'export DCRON_TEST_CHROMEDRIVER=%q\n' "$driver"
  printf 'export DCRON_TEST_CHROMIUM=%q\n' "$browser"
else
  log "chromium: no chromium or chromedriver binary"
fi
