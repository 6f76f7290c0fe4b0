#!/usr/bin/env bash
# Installs the peers `npm run bench:peers` measures the sim against: QEMU's TCG, Bochs
# (with a VGA BIOS, its terminal display library bochs-term, and `script` for that
# terminal), NASM for the guests, and the unicorn PyPI package (into the user's
# site-packages).
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nasm qemu-system-x86 bochs bochs-term bochsbios vgabios bsdutils python3-pip
python3 -m pip install --user --break-system-packages unicorn 2>/dev/null || python3 -m pip install --user unicorn
