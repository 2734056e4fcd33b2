#!/bin/bash
# Builds dist/authmilter_<version>_<arch>.deb from this tree with dpkg-deb alone (no debhelper).
#
# The program ships as a virtualenv in /opt/authmilter/venv, the path the systemd unit runs.
# A venv records its own absolute path (shebangs, pyvenv.cfg, activate scripts), so it is built
# in a staging directory and every mention of the staging path is rewritten afterwards; the
# build fails if one is left. No byte code is shipped: postinst compiles it with the final paths.
#
# Build tools (Debian 12): python3-venv python3-dev gcc libc6-dev libmilter-dev dpkg-dev
# (`make deb` installs them). Environment: DEB_REVISION (default 1), DEB_MAINTAINER.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
cd "$top"

PYTHON=/usr/bin/python3
PREFIX=/opt/authmilter/venv
PACKAGE=authmilter
MAINTAINER=${DEB_MAINTAINER:-"authmilter maintainers <maintainers@users.noreply.r-seed-814be507.example>"}

upstream=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# A Debian revision makes this a non-native package, as changelog.Debian.gz says it is.
version="$upstream-${DEB_REVISION:-1}"
arch=$(dpkg --print-architecture)
out="$top/dist/${PACKAGE}_${version}_${arch}.deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/authmilter-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage="$work/root"
venv="$stage$PREFIX"

say() { printf 'build-deb: %s\n' "$*" >&2; }

# --- the program --------------------------------------------------------------------------------
# pip builds in the source directory (build/, *.egg-info): a copy keeps the working tree untouched.
src="$work/src"
mkdir -p "$src"
# Everything but tests, caches and VCS, so that package data from anywhere in the tree is there.
tar -C "$top" --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build --exclude=./tests \
  --exclude=./benchmarks --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
  --exclude=./.hypothesis -cf - . | tar -C "$src" -xf -

# Optional features the package supports out of the box; test tools are never installed.
extras=$("$PYTHON" - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(",".join(e for e in ("redis", "postgresql") if e in project.get("optional-dependencies", {})))
EOF
)
spec="$src"
[ -n "$extras" ] && spec="$src[$extras]"

say "virtualenv with $spec"
"$PYTHON" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q --no-compile "$spec"
# pip and setuptools are only how the venv was filled; nothing imports them at run time.
"$venv/bin/python" -m pip uninstall -q -y pip setuptools wheel 2>/dev/null \
  || "$venv/bin/python" -m pip uninstall -q -y pip setuptools
# Wheels ship their extensions with symbol tables; stripped as Debian does for shared libraries.
# Libraries auditwheel bundled (*.libs) come stripped, and are left as they are.
while IFS= read -r -d '' f; do
  if readelf -S "$f" 2>/dev/null | grep -q '\.symtab'; then
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$f"
  fi
done < <(find "$venv/lib" -type f -name '*.so' -print0)
# After stripping, so that a broken extension stops the build here rather than on a server.
"$venv/bin/python" -c 'import authmilter.cli, authmilter.milter.adapter, Milter, dkim, spf, authres, dns, nacl, cryptography.hazmat.bindings._rust, psycopg, psycopg_binary, redis'
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +
find "$venv" -name '*.pyc' -delete
# The install's source was a temporary copy: its file:// URL would name a directory that is gone.
for f in "$venv"/lib/python3*/site-packages/*.dist-info/direct_url.json; do
  [ -e "$f" ] || continue
  sed -i '/direct_url\.json,/d' "$(dirname "$f")/RECORD"
  rm -f "$f"
done

# Text files naming the staging path get the final one; a binary file naming it cannot be
# rewritten safely (different length), so it stops the build.
grep -rlIZF "$venv" "$venv" | xargs -0 -r sed -i "s|$venv|$PREFIX|g"
if left=$(grep -rlF "$stage" "$stage"); then
  say "files still naming the staging directory:"; printf '%s\n' "$left" >&2; exit 1
fi

# --- files --------------------------------------------------------------------------------------
install -d "$stage/usr/sbin" "$stage/etc/authmilter/policies" "$stage/lib/systemd/system" \
  "$stage/usr/lib/sysusers.d" "$stage/usr/share/man/man8" "$stage/usr/share/man/man5" \
  "$stage/usr/share/doc/$PACKAGE/examples/policies" "$stage/usr/share/lintian/overrides"
ln -s "$PREFIX/bin/authmilter" "$stage/usr/sbin/authmilter"

"$PYTHON" packaging/install-config.py etc/authmilter.toml "$stage/etc/authmilter/authmilter.toml"
install -m 0644 policies/*.toml "$stage/etc/authmilter/policies/"

install -m 0644 systemd/authmilter.service systemd/authmilter-report.service \
  systemd/authmilter-report.timer "$stage/lib/systemd/system/"
install -m 0644 systemd/authmilter.sysusers "$stage/usr/lib/sysusers.d/authmilter.conf"

gzip -9n < docs/man/authmilter.8 > "$stage/usr/share/man/man8/authmilter.8.gz"
gzip -9n < docs/man/authmilter.toml.5 > "$stage/usr/share/man/man5/authmilter.toml.5.gz"

doc="$stage/usr/share/doc/$PACKAGE"
install -m 0644 policies/examples/*.toml "$doc/examples/policies/"
install -m 0644 etc/signing.example.toml "$doc/examples/"
install -m 0644 systemd/README.md "$doc/README.systemd.md"
install -m 0644 docs/postfix.md docs/sendmail.md docs/signing.md "$doc/"
gzip -9n < README.md > "$doc/README.md.gz"
install -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/$PACKAGE"

# The changelog's date is the last commit's, so that two builds of one tree are the same.
date=$(git -C "$top" log -1 --format=%cD 2>/dev/null || date -R)
sed -e "s|@VERSION@|$version|g" -e "s|@MAINTAINER@|$MAINTAINER|g" -e "s|@DATE@|$date|g" \
  packaging/debian/changelog | gzip -9n > "$doc/changelog.Debian.gz"

# copyright: ours, then one stanza per distribution in the venv, read from its own metadata.
{
  cat packaging/debian/copyright
  "$venv/bin/python" - "$PREFIX" <<'EOF'
import importlib.metadata as md
import sys

prefix = sys.argv[1]
for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    meta = dist.metadata
    name = meta["Name"]
    if name.lower() == "authmilter":
        continue
    lic = meta.get("License-Expression") or ""
    if not lic:
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or []
                       if c.startswith("License ::")]
        short = (meta.get("License") or "").strip()
        lic = " or ".join(classifiers) or (short if short and "\n" not in short else "see the license files")
    files = sorted(str(f) for f in dist.files or []
                   if any(p in str(f).upper() for p in ("LICENSE", "COPYING", "NOTICE")))
    print()
    print(f"Files: {prefix}/lib/python3*/site-packages/{name.replace('-', '_')}*")
    print(f"Comment: {name} {dist.version}, from PyPI; its license texts are in the venv:")
    for f in files or ["(none shipped)"]:
        print(f" {f}")
    print(f"Copyright: the {name} authors")
    print(f"License: {lic}")
EOF
} > "$doc/copyright"

install -d "$stage/DEBIAN"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
# conffiles must list exactly the files shipped in /etc.
diff <(sort packaging/debian/conffiles) <(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >&2

# --- dependencies -------------------------------------------------------------------------------
# The compiled extensions: dpkg-shlibdeps maps the libraries they link to Debian packages
# (libmilter1.0.1 and libc6 here). Libraries the wheels bundle (psycopg_binary.libs, ...) are
# part of this package and looked up there.
sofiles=()
while IFS= read -r -d '' f; do sofiles+=("$f"); done < <(find "$venv" -type f -name '*.so*' -print0)
libdirs=()
while IFS= read -r d; do libdirs+=("-l$d"); done < <(find "$venv" -type d -name '*.libs')
mkdir -p "$work/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" "$PACKAGE" > "$work/shlibs/debian/control"
shlibdeps=$(cd "$work/shlibs" && dpkg-shlibdeps -O --warnings=1 "-S$stage" "${libdirs[@]}" "${sofiles[@]}" \
  | sed -n 's/^shlibs:Depends=//p')
# The venv's lib/python3.11 and its cpython-311 extensions work with that minor version only.
pyminor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pynext=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
# libmilter1.0.1 is named even if no extension linked it (pymilter's does, and then shlibdeps
# gives it with its version instead).
milter=libmilter1.0.1
case ", $shlibdeps," in *", libmilter1.0.1 "*|*", libmilter1.0.1,"*) milter="" ;; esac
# procps: the unit's ExecReload= runs /bin/kill, which minimal Debian systems lack.
depends="python3 (>= $pyminor), python3 (<< $pynext)${milter:+, $milter}, adduser, procps${shlibdeps:+, $shlibdeps}"

# --- the package --------------------------------------------------------------------------------
# Modes as dpkg-deb expects them whatever umask pip ran under; /etc's are set by postinst.
find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f -perm /111 -exec chmod 0755 {} + \
  -o -type f -exec chmod 0644 {} +
# Modules and shared libraries are read, never run: only the venv's bin/ is executable.
find "$venv/lib" -type f -exec chmod 0644 {} +
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$MAINTAINER|" \
    -e "s|@DEPENDS@|$depends|" -e "s|@SIZE@|$size|" \
    packaging/debian/control.in > "$stage/DEBIAN/control"

mkdir -p "$top/dist"
dpkg-deb --build --root-owner-group -Zxz "$stage" "$out.tmp" >/dev/null
mv "$out.tmp" "$out"
say "built $out ($(du -h "$out" | cut -f1))"
echo "$out"
