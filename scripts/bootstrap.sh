#!/usr/bin/env bash
# Install what `make run` and `make test` need, once; quick when already done.
#   - Debian packages: Orthanc and its plugins, PostgreSQL, dcmtk (and Chromium
#     with its chromedriver for the browser tests, with --test; HAProxy with
#     --test or --cluster)
#   - a venv made from the interpreter libOrthancPython.so links against,
#     holding Atrium and its dependencies (and the test tools with --test)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_cluster=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --cluster) want_cluster=1 ;;
  esac
done

packages=(orthanc orthanc-python orthanc-dicomweb orthanc-postgresql postgresql dcmtk python3-venv)
# The slide viewer's browser tests drive Debian's Chromium through its chromedriver.
if [ $want_test -eq 1 ]; then packages+=(chromium chromium-driver); fi
# `make cluster` (atrium run --nodes N) puts HAProxy in front of the nodes; the
# suite tests that shape.
if [ $want_test -eq 1 ] || [ $want_cluster -eq 1 ]; then packages+=(haproxy); fi
# npm fetches the OHIF build that /viewer/ serves (below); any Node with npm will do.
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "atrium: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  # Debian's orthanc and postgresql packages start system services on install;
  # Atrium runs its own processes, so keep those services down while installing.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"; created_policy=1
  fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ $created_policy -eq 1 ] && "${sudo_cmd[@]}" rm -f "$policy"
fi

# The interpreter Orthanc embeds: the libpython that libOrthancPython.so links to.
plugin_so=$(ls /usr/lib/orthanc/libOrthancPython.so* /usr/share/orthanc/plugins/libOrthancPython.so 2>/dev/null | head -n1)
libpython=$(ldd "$plugin_so" | awk '/libpython3/ {print $1; exit}')
pyver=$(echo "$libpython" | sed -E 's/libpython(3\.[0-9]+).*/\1/')
python="/usr/bin/python${pyver}"
[ -x "$python" ] || { echo "atrium: $python (embedded by Orthanc) is missing" >&2; exit 1; }

venv=.venv
stamp="$venv/.atrium-installed"
extras="dev"
[ $want_test -eq 1 ] && extras="test,dev"
if [ ! -x "$venv/bin/python" ] || [ "$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')" != "/usr" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
# Installed already with these extras (or more: `make run` after `make test`)?
installed=$(cat "$stamp" 2>/dev/null || true)
satisfied=1
[ -f "$stamp" ] && [ ! setup.cfg -nt "$stamp" ] || satisfied=0
for extra in ${extras//,/ }; do
  [[ ",$installed," == *",$extra,"* ]] || satisfied=0
done
if [ $satisfied -eq 0 ]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[$extras]"
  echo "$extras" > "$stamp"
fi
# OHIF for /viewer/: the pinned @ohif/app build from npm, checked and relocated once
# (plugin/atrium/viewer/install.py); nothing loads from a CDN at run time.
# Atrium runs without it (/viewer/ then answers 404 saying so): a failure warns only.
"$venv/bin/python" -m atrium.viewer.install build/viewer >/dev/null \
  || echo "atrium: OHIF was not installed; /viewer/ stays unavailable (docs/VIEWER.md)" >&2
