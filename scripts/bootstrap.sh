#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (Python 3.11, root, no screen).
# Installs Debian packages that are missing (when run as root), creates .venv/ in the
# checkout and installs SpeakerOps into it with the CPU build of torch 2.13.0.
# Fast when nothing is missing: each step checks first and a stamp keyed on
# pyproject.toml skips pip entirely.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client          # real sshd units in the simulator and tests
  espeak-ng sox                          # TTS and audio tooling for the inference core
  xvfb xauth                             # a virtual screen for screenshots
  libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0
  libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-xinerama0 libxcb-shape0 libxcb-randr0 libxcb-xfixes0 libxcb-sync1 libxcb-xkb1
  libpulse0 libasound2                   # QtMultimedia runtime
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: not root, cannot install Debian packages: ${missing[*]}" >&2
    echo "bootstrap: ask an administrator to run: apt-get install ${missing[*]}" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi

stamp=.venv/.speakerops-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv"
  pip_install() {  # quiet; drops pip's notes about unreadable extra index locations
    .venv/bin/pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
  }
  pip_install --upgrade pip setuptools wheel
  # The local CPU wheel first: any other torch request pulls the CUDA build.
  pip_install "torch==2.13.0"
  pip_install -e ".[dev]"
  # Resemblyzer's metadata pins the `typing` backport; its real needs are in pyproject.toml.
  pip_install --no-deps "resemblyzer==0.1.4"
  echo "$want" > "$stamp"
fi
