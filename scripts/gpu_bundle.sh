#!/usr/bin/env bash
# Gathers, on a development machine (Debian 12, network to Debian's archive), what the GPU
# machine lacks to build and test lowbit, into the git-ignored folder .gpu_bundle/:
#
#   .gpu_bundle/debs/                 Debian .deb files (apt-get download, never installed here):
#                                     the -dev and runtime packages of oneDNN, OpenBLAS, yaml-cpp,
#                                     GoogleTest, libjpeg-turbo, nlohmann-json and zlib (all in
#                                     scripts/setup.sh), plus the few runtime libraries they need
#                                     that a bare CUDA image lacks. Not MPI: too big, optional.
#   .gpu_bundle/debs/PACKAGES.txt     package, version and file of every .deb.
#   .gpu_bundle/data/fashion-mnist/   the IDX files of Debian's dataset-fashion-mnist package.
#
# scripts/gpu_check.sh unpacks the debs with `dpkg -x` into build-gpu/prefix on the GPU machine
# (never onto /). The folder must travel to that machine with the working tree, so it is
# kept small: the script fails if it ends up over 50 MB (10^6 bytes). To stay under, the
# static archives (.a, ~57 MB unpacked) are dropped from libopenblas-pthread-dev by
# repacking that one .deb with dpkg-deb; lowbit links OpenBLAS as a shared library.
#
# Idempotent: a .deb already present at the archive's current version is not downloaded
# again, files that do not belong here any more are removed, data files are copied only
# when they differ. Needs apt-get and dpkg-deb, not root (root only to refresh apt lists).
set -euo pipefail

cd "$(dirname "$0")/.."
bundle="$PWD/.gpu_bundle"
debs_dir="$bundle/debs"
data_src="/usr/share/datasets/fashion-mnist"
data_dst="$bundle/data/fashion-mnist"
limit_bytes=$((50 * 1000 * 1000))

# What lowbit builds against. libgomp1 is left out: every machine with gcc has it.
packages=(
  libdnnl-dev libdnnl2                                   # oneDNN: CPU convolution
  libopenblas-dev libopenblas0 libopenblas-pthread-dev libopenblas0-pthread  # GEMM
  libyaml-cpp-dev libyaml-cpp0.7                         # experiment configs
  libgtest-dev libgmock-dev googletest                   # tests (static libs + sources)
  libjpeg62-turbo-dev libjpeg62-turbo                    # ImageNet-style JPEG folders
  nlohmann-json3-dev                                     # JSON (header only)
  zlib1g-dev zlib1g                                      # gzip-compressed IDX files
  # Runtime dependencies (apt-cache depends) that a bare CUDA-toolkit image probably lacks:
  ocl-icd-libopencl1                                     # libOpenCL.so.1, NEEDED by libdnnl.so.2
  libgfortran5 libquadmath0                              # NEEDED by libopenblas.so.0
)
# Packages whose static archives are dropped to keep the bundle small.
strip_static=(libopenblas-pthread-dev)

for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "gpu_bundle: $tool not found (Debian only)" >&2; exit 1; }
done

mkdir -p "$debs_dir" "$data_dst"

# The file name apt-get download gives the candidate version of $1 (':' is written '%3a').
deb_file_name() {
  local pkg="$1" version arch
  version=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  arch=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Architecture: //p' | head -n1)
  if [ -z "$version" ] || [ -z "$arch" ]; then
    echo "gpu_bundle: apt knows no package '$pkg' (run 'apt-get update'?)" >&2
    return 1
  fi
  echo "${pkg}_${version//:/%3a}_${arch}.deb"
}

download() {
  local pkg="$1"
  if (cd "$debs_dir" && apt-get download -qq "$pkg" 2>/dev/null); then return 0; fi
  if [ "$(id -u)" -eq 0 ]; then
    echo "gpu_bundle: apt-get download $pkg failed; refreshing the apt lists once"
    apt-get update -qq
    (cd "$debs_dir" && apt-get download -qq "$pkg")
  else
    echo "gpu_bundle: apt-get download $pkg failed; try 'sudo apt-get update'" >&2
    return 1
  fi
}

# Rewrites $1 without its static archives (and their md5sums lines). No-op when it has none.
drop_static_archives() {
  local deb="$1" work
  # (grep -q would close the pipe early, and pipefail would turn that into a failure.)
  if [ "$(dpkg-deb -c "$deb" | grep -c '\.a$')" -eq 0 ]; then return 0; fi
  work=$(mktemp -d)
  dpkg-deb -R "$deb" "$work/pkg"
  find "$work/pkg" -name '*.a' ! -path "$work/pkg/DEBIAN/*" \( -type f -o -type l \) \
    -print -delete | sed "s#^$work/pkg#gpu_bundle:   dropped #"
  if [ -f "$work/pkg/DEBIAN/md5sums" ]; then
    grep -v '\.a$' "$work/pkg/DEBIAN/md5sums" >"$work/md5sums" || true
    mv "$work/md5sums" "$work/pkg/DEBIAN/md5sums"
  fi
  dpkg-deb --root-owner-group -Zxz -b "$work/pkg" "$work/out.deb" >/dev/null
  mv "$work/out.deb" "$deb"
  rm -rf "$work"
}

wanted_files=()
manifest="$debs_dir/PACKAGES.txt.new"
: >"$manifest"
for pkg in "${packages[@]}"; do
  file=$(deb_file_name "$pkg")
  if [ ! -f "$debs_dir/$file" ]; then
    rm -f "$debs_dir/${pkg}_"*.deb   # an older version of the same package
    echo "gpu_bundle: downloading $pkg"
    download "$pkg"
    [ -f "$debs_dir/$file" ] || { echo "gpu_bundle: expected $debs_dir/$file after download" >&2; exit 1; }
  fi
  for s in "${strip_static[@]}"; do
    if [ "$s" = "$pkg" ]; then drop_static_archives "$debs_dir/$file"; fi
  done
  wanted_files+=("$file")
  printf '%s %s\n' "$pkg" "$file" >>"$manifest"
done
mv "$manifest" "$debs_dir/PACKAGES.txt"

# Remove what is no longer on the list.
for f in "$debs_dir"/*.deb; do
  [ -e "$f" ] || continue
  keep=0
  for w in "${wanted_files[@]}"; do [ "$(basename "$f")" = "$w" ] && keep=1 && break; done
  if [ "$keep" -eq 0 ]; then echo "gpu_bundle: removing stale $(basename "$f")"; rm -f "$f"; fi
done

# Fashion-MNIST, as the Debian package installs it (gzip-compressed IDX files).
if ! compgen -G "$data_src/*-ubyte.gz" >/dev/null; then
  echo "gpu_bundle: no Fashion-MNIST files in $data_src; run scripts/setup.sh" \
       "(package dataset-fashion-mnist)" >&2
  exit 1
fi
for src in "$data_src"/*-ubyte.gz; do
  dst="$data_dst/$(basename "$src")"
  if ! cmp -s "$src" "$dst"; then
    cp --preserve=timestamps "$src" "$dst"
    echo "gpu_bundle: copied $(basename "$src")"
  fi
done
for dst in "$data_dst"/*; do
  [ -e "$dst" ] || continue
  [ -e "$data_src/$(basename "$dst")" ] || { echo "gpu_bundle: removing stale $dst"; rm -f "$dst"; }
done

total=$(du -sb "$bundle" | cut -f1)
echo "gpu_bundle: ${#wanted_files[@]} debs ($(du -sh "$debs_dir" | cut -f1))," \
     "Fashion-MNIST ($(du -sh "$data_dst" | cut -f1)), total $total bytes" \
     "($((total / 1000000)) MB) in $bundle"
if [ "$total" -gt "$limit_bytes" ]; then
  echo "gpu_bundle: over the limit of $limit_bytes bytes; the bundle must travel with the" \
       "working tree, so trim it" >&2
  exit 1
fi
