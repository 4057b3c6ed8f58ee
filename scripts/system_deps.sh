#!/bin/sh
# Makes sure the system parts named as arguments are present:
#   libfluidsynth - the synthesizer behind pyfluidsynth (Debian libfluidsynth3)
#   chromium      - the browser the UI tests drive (Debian chromium)
#   ffmpeg        - Gradio encodes the page's streamed audio with it (Debian ffmpeg)
# Installs them with apt when running as root, else prints the one command to run.
set -e
missing=""
for part in "$@"; do
  case "$part" in
    libfluidsynth)
      ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so' || missing="$missing libfluidsynth3" ;;
    chromium)
      [ -x /usr/bin/chromium ] || missing="$missing chromium" ;;
    ffmpeg)
      command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg" ;;
  esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "Missing system packages:$missing. Run once: sudo apt-get install -y$missing" >&2
  exit 1
fi
