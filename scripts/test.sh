#!/usr/bin/env bash
# Install what the tests need (system packages for a virtual display, the package and its dev
# extra), lint, and run the whole test suite under Xvfb. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# napari needs OpenGL (Mesa) and a display (Xvfb); Qt's xcb platform needs the xcb libraries.
packages=(xvfb xauth libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3
          libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
          libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
          chromium)  # the slide report's test opens the page in a real headless browser
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

bash scripts/setup.sh
.venv/bin/ruff check .
xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
