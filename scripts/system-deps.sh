#!/usr/bin/env bash
# Debian packages some tests, examples and benchmarks read: Chromium (report check), Fashion-MNIST, espeak-ng (the
# synthetic audio example), fortunes (a text example), the emoji font and unicode-data (more emoji: the
# benchmarks' held-out items, examples/emoji/build.py). Installs what is missing when apt-get can run;
# otherwise says what is missing, and the tests that need it skip with that reason.
set -uo pipefail
want=(chromium dataset-fashion-mnist espeak-ng fortunes fonts-noto-color-emoji unicode-data)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: no apt-get; missing ${missing[*]} (their tests will skip)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/headstart-apt.log 2>&1; then
  $SUDO apt-get update -q >/dev/null 2>&1 && \
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/headstart-apt.log 2>&1 || \
    echo "system-deps: could not install ${missing[*]} (see /tmp/headstart-apt.log); their tests will skip"
fi
exit 0
