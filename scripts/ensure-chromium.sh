#!/usr/bin/env bash
# The console's browser tests (tests/console) drive Debian's Chromium
# through chromedriver: installs both (and a font) with apt-get when either
# is missing. Never downloads a browser from anywhere else.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "ensure-chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
pkgs="chromium chromium-driver fonts-dejavu-core"
$sudo apt-get install -y -q $pkgs >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $pkgs >/dev/null; }
echo "ensure-chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -1)"
