#!/usr/bin/env bash
# Debian's Chromium and its ChromeDriver for the browser tests in tests/web (as root,
# idempotent): installs them only when missing, with one `apt-get update` first.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium.sh: needs root to install chromium and chromium-driver" >&2
  exit 1
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
