#!/usr/bin/env bash
# Makes examples/wordpress/site: Debian's WordPress (the `wordpress` package, installed when
# missing) as one self-contained directory, its links to other packages' files copied in (an
# instance sees the directory alone), with this example's wp-config.php. Run it again after the
# package is upgraded.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f /usr/share/wordpress/wp-settings.php ]; then
  echo "prepare: installing Debian's wordpress package"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 wordpress >/dev/null
fi
rm -rf site.new
cp -rL /usr/share/wordpress site.new
rm -f site.new/wp-config.php site.new/.htaccess
cp wp-config.php site.new/wp-config.php
# Where the uploads volume is mounted, in the read-only directory.
mkdir -p site.new/wp-content/uploads
rm -rf site
mv site.new site
echo "prepare: $(du -sh site | cut -f1) in examples/wordpress/site"
