#!/usr/bin/env bash
# Builds lowbit with CUDA on the GPU machine and runs every test, then proves that the GPU
# tests really ran. Run it from anywhere; it works in the repository root.
#
# The GPU machine has the CUDA toolkit, cmake, ninja and python3 with cuDNN/NCCL as pip
# nvidia-* wheels, but no Debian -dev packages and no network. What it lacks comes from
# .gpu_bundle/ (made on a development machine by scripts/gpu_bundle.sh):
#   1. print the device (nvidia-smi);
#   2. unpack every .gpu_bundle/debs/*.deb with `dpkg -x` into build-gpu/prefix, never onto /,
#      and redo there what the packages' maintainer scripts would have done on /: OpenBLAS's
#      update-alternatives links (libopenblas.so, cblas.h, OpenBLASConfig.cmake, *.pc), and
#      absolute /usr paths in OpenBLASConfig.cmake and the pkg-config files rewritten to the
#      prefix. (The CMake package files of GTest, yaml-cpp, dnnl and nlohmann_json are
#      relocatable: they locate themselves, so they are left as they are.);
#   3. configure build-gpu with LOWBIT_CUDA=ON against the prefix, build with all cores;
#   4. run all tests (ctest), with LOWBIT_FASHION_MNIST_DIR pointing at the bundled data;
#   5. fail unless at least one test labelled `gpu` ran without being skipped;
#   6. with --bench: scripts/gpu_bench.sh (the issue 8 speed measurements against PyTorch);
#   7. with --sanitize: every GPU suite (*Gpu.*) once more under compute-sanitizer, memcheck then
#      racecheck, each test binary on its own; any report fails the check (log in $OUT).
# Exits non-zero on any failure.
#
#   scripts/gpu_check.sh                 everything above but 6
#   scripts/gpu_check.sh --gpu-only      only the `gpu`-labelled tests in step 4 (CI runs the
#                                        rest on every push): what a short device lease needs
#   scripts/gpu_check.sh --bench         also step 6 (after the verdict, also when tests failed)
#   scripts/gpu_check.sh --sanitize      also step 7 (after the benchmarks: timings come first on
#                                        a short lease; memcheck makes the suites 10-100x slower)
#   scripts/gpu_check.sh --unpack-only   step 2 only, then print the environment (no GPU needed)
#
# Where $OUT is set (the device tool's folder that comes back), the GPU test log, the failing
# tests' output and the benchmark results are copied there.
#
# Environment: LOWBIT_GPU_BUILD_DIR (default build-gpu), CTEST_PARALLEL_LEVEL (default: cores).
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
build="$root/${LOWBIT_GPU_BUILD_DIR:-build-gpu}"
prefix="$build/prefix"
bundle="$root/.gpu_bundle"
unpack_only=0
gpu_only=0
bench=0
sanitize=0
for arg in "$@"; do
  case "$arg" in
    --unpack-only) unpack_only=1 ;;
    --gpu-only) gpu_only=1 ;;
    --bench) bench=1 ;;
    --sanitize) sanitize=1 ;;
    *) echo "usage: $0 [--unpack-only | [--gpu-only] [--bench] [--sanitize]]" >&2; exit 2 ;;
  esac
done

say() { echo "gpu_check: $*"; }
die() { echo "gpu_check: FAILED: $*" >&2; exit 1; }

# The bundled debs are Debian 12 amd64.
[ "$(uname -m)" = "x86_64" ] || die "the bundled .debs are amd64, this machine is $(uname -m)"
arch="x86_64-linux-gnu"
libdir="$prefix/usr/lib/$arch"
incdir="$prefix/usr/include/$arch"

# --- 1. the device ---------------------------------------------------------------------------
if [ "$unpack_only" -eq 0 ]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this the GPU machine?"
  nvidia-smi || die "nvidia-smi failed: no usable GPU or driver"
  nvidia-smi -L | grep -q '^GPU ' || die "nvidia-smi lists no GPU"
fi

# --- 2. unpack the bundle into the prefix ----------------------------------------------------
compgen -G "$bundle/debs/*.deb" >/dev/null ||
  die "no $bundle/debs/*.deb; run scripts/gpu_bundle.sh on a development machine first"

# dpkg -x where dpkg exists; otherwise the same with ar + tar (a .deb is an ar archive).
extract_deb() {
  local deb="$1" dest="$2" member
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$dest"
    return
  fi
  member=$(ar t "$deb" | grep '^data\.tar') || die "$deb has no data.tar member"
  case "$member" in
    *.xz) ar p "$deb" "$member" | tar -xJ -C "$dest" ;;
    *.zst) ar p "$deb" "$member" | tar --zstd -x -C "$dest" ;;
    *.gz) ar p "$deb" "$member" | tar -xz -C "$dest" ;;
    *) ar p "$deb" "$member" | tar -x -C "$dest" ;;
  esac
}

# A fresh prefix every run: cheap (seconds), and no leftovers from an older bundle. File
# times come from the .debs, so an unchanged bundle triggers no rebuild.
rm -rf "$prefix"
mkdir -p "$prefix"
debs=("$bundle"/debs/*.deb)
for deb in "${debs[@]}"; do
  extract_deb "$deb" "$prefix"
done
say "unpacked ${#debs[@]} debs into $prefix"

# OpenBLAS is installed through update-alternatives (libopenblas-pthread-dev and
# libopenblas0-pthread postinst); dpkg -x does not run that, so make the same links,
# relative, inside the prefix. Static-archive links are skipped (gpu_bundle.sh drops .a).
alt_link() {  # alt_link <link, relative to prefix> <target, relative to the link's dir>
  local link="$prefix/$1" target="$2"
  [ -e "$(dirname "$link")/$target" ] || die "OpenBLAS alternative $1 -> $target: target missing"
  mkdir -p "$(dirname "$link")"
  ln -sfn "$target" "$link"
}
l="usr/lib/$arch"
i="usr/include/$arch"
alt_link "$l/libopenblas.so.0" openblas-pthread/libopenblas.so.0
alt_link "$l/libopenblas.so" openblas-pthread/libopenblas.so
alt_link "$l/libblas.so.3" openblas-pthread/libblas.so.3
alt_link "$l/libblas.so" openblas-pthread/libblas.so
alt_link "$l/liblapack.so.3" openblas-pthread/liblapack.so.3
alt_link "$l/liblapack.so" openblas-pthread/liblapack.so
alt_link "$i/cblas.h" openblas-pthread/cblas.h
alt_link "$i/cblas-openblas.h" openblas-pthread/cblas.h
alt_link "$i/f77blas.h" openblas-pthread/f77blas.h
alt_link "$i/openblas_config.h" openblas-pthread/openblas_config.h
alt_link "$l/pkgconfig/openblas.pc" ../openblas-pthread/pkgconfig/openblas.pc
alt_link "$l/pkgconfig/blas.pc" ../openblas-pthread/pkgconfig/blas-openblas.pc
alt_link "$l/pkgconfig/lapack.pc" ../openblas-pthread/pkgconfig/lapack-openblas.pc
alt_link "$l/cmake/openblas/OpenBLASConfig.cmake" \
  ../../openblas-pthread/cmake/openblas/OpenBLASConfig.cmake
alt_link "$l/cmake/openblas/OpenBLASConfigVersion.cmake" \
  ../../openblas-pthread/cmake/openblas/OpenBLASConfigVersion.cmake

# Absolute /usr paths: OpenBLASConfig.cmake (SET(OpenBLAS_LIBRARIES /usr/...)) and the
# pkg-config files (prefix=/usr, libdir=/usr/..., -I/usr/include).
case "$prefix" in *[\#\&\\]*) die "the prefix path '$prefix' has a character sed cannot take" ;; esac
sed -i -E "s#([[:space:](\"])/usr/#\\1$prefix/usr/#g" \
  "$libdir/openblas-pthread/cmake/openblas/OpenBLASConfig.cmake"
find "$prefix/usr" -name '*.pc' -type f -print0 |
  xargs -0 sed -i -E "s#(^[A-Za-z_]+=|-I|-L)/usr(/|\$|[[:space:]])#\\1$prefix/usr\\2#g"
# Absolute symlinks point out of the prefix (zlib1g-dev: libz.so -> /lib/<arch>/libz.so.1...):
# point them at the prefix's copy.
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  case "$target" in /usr/*|/lib/*|/etc/*) ln -sfn "$prefix$target" "$link" ;; esac
done < <(find "$prefix" -type l -lname '/*' -print0)
# Warn about package files that still name /usr/lib or /usr/include, other than through the
# "/usr move" checks of CMake's generated files (those only fire when loaded from /usr).
leftover=$(grep -rIl -E '(^|[[:space:]"=(])/usr/(lib|include)' \
             "$prefix/usr/lib/$arch/cmake" "$prefix/usr/share/cmake" \
             "$libdir/openblas-pthread/cmake" 2>/dev/null |
           xargs -r grep -L -E '_realOrig|PACKAGE_PREFIX_DIR "/usr"' || true)
[ -z "$leftover" ] || say "warning: absolute /usr paths remain in: $leftover"

# Where the pip nvidia-* wheels keep their libraries (cuDNN, NCCL, CUDA 13's nvidia/cu13).
wheel_libs=""
while IFS= read -r py; do
  dirs=$("$py" - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
sites = list(getattr(site, "getsitepackages", lambda: [])())
sites.append(site.getusersitepackages())
sites += [p for p in sys.path if p]
seen = []
for s in sites:
    for d in sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib"))):
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
print(":".join(seen))
EOF
  )
  if [ -n "$dirs" ]; then wheel_libs="${wheel_libs:+$wheel_libs:}$dirs"; fi
done < <(type -ap python3 | awk '!seen[$0]++')

wheel_libs=$(tr ':' '\n' <<<"$wheel_libs" | awk 'NF && !seen[$0]++' | paste -sd: -)

# The test binaries find the bundled libraries and the wheels' libraries here, also the
# libraries those need (libdnnl -> libOpenCL, libopenblas -> libgfortran), which the
# binaries' RUNPATH does not cover. Exported only from the build on (gtest_discover_tests
# runs the test binaries right after linking), so cmake's own configure step never loads
# a Debian library in place of the machine's.
test_ld_path="$libdir:$libdir/openblas-pthread:$prefix/lib/$arch${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$libdir/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LOWBIT_FASHION_MNIST_DIR="$bundle/data/fashion-mnist"

# The prefix stands in for /usr: CMAKE_PREFIX_PATH and the library/include paths make
# find_package/find_library/find_path look there (also when CMake does not know the
# multiarch name), the *_DIR hints name the package config folders outright, the
# STANDARD_INCLUDE_DIRECTORIES stand in for the compiler's built-in /usr/include/<arch>
# (jconfig.h, cblas.h), and -rpath-link lets ld resolve the bundled libraries' own NEEDED.
cmake_args=(
  -G Ninja
  -DCMAKE_BUILD_TYPE=Release
  -DLOWBIT_CUDA=ON
  "-DCMAKE_PREFIX_PATH=$prefix/usr"
  "-DCMAKE_LIBRARY_PATH=$libdir;$libdir/openblas-pthread;$prefix/lib/$arch"
  "-DCMAKE_INCLUDE_PATH=$prefix/usr/include;$incdir;$incdir/openblas-pthread"
  "-DGTest_DIR=$libdir/cmake/GTest"
  "-Dyaml-cpp_DIR=$libdir/cmake/yaml-cpp"
  "-Ddnnl_DIR=$libdir/cmake/dnnl"
  "-DOpenBLAS_DIR=$libdir/cmake/openblas"
  "-Dnlohmann_json_DIR=$prefix/usr/share/cmake/nlohmann_json"
  "-DCMAKE_C_STANDARD_INCLUDE_DIRECTORIES=$incdir"
  "-DCMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES=$incdir"
  "-DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES=$incdir"
  "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$libdir:$libdir/openblas-pthread:$prefix/lib/$arch"
  "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath-link,$libdir:$libdir/openblas-pthread:$prefix/lib/$arch"
)

if [ "$unpack_only" -eq 1 ]; then
  echo "export LD_LIBRARY_PATH='$test_ld_path'   # for the build and the tests"
  echo "export PKG_CONFIG_PATH='$PKG_CONFIG_PATH'"
  echo "export LOWBIT_FASHION_MNIST_DIR='$LOWBIT_FASHION_MNIST_DIR'"
  printf 'cmake arguments:'; printf " '%s'" "${cmake_args[@]}"; echo
  exit 0
fi

# --- 3. configure and build ------------------------------------------------------------------
# Only this GPU's architecture (nvidia-smi's compute capability, 9.0 -> 90-real): a third of the
# CUDA compile time of the default 80-real;90-real;90-virtual, which matters on a short lease.
# CMAKE_CUDA_ARCHITECTURES in the environment overrides it.
cuda_arch="${CMAKE_CUDA_ARCHITECTURES:-}"
if [ -z "$cuda_arch" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .' || true)
  case "$cap" in
    [1-9][0-9]) cuda_arch="${cap}-real" ;;
    *) say "nvidia-smi gave no compute capability ('$cap'); CMake chooses the architectures" ;;
  esac
fi
if [ -n "$cuda_arch" ]; then cmake_args+=("-DCMAKE_CUDA_ARCHITECTURES=$cuda_arch"); fi
say "cmake $(cmake --version | head -n1 | awk '{print $3}'), python3 wheels' libs: ${wheel_libs:-none}"
cmake -S "$root" -B "$build" --no-warn-unused-cli "${cmake_args[@]}" || die "configure"
export LD_LIBRARY_PATH="$test_ld_path"
cmake --build "$build" --parallel "$(nproc)" || die "build"

# --- 4. all tests, once: the non-GPU ones, then the GPU ones verbosely (for step 5) ----------
export CTEST_PARALLEL_LEVEL="${CTEST_PARALLEL_LEVEL:-$(nproc)}"
status=0
if [ "$gpu_only" -eq 0 ]; then
  (cd "$build" && ctest --output-on-failure -LE '^gpu$') || status=1
else
  say "--gpu-only: the tests without the gpu label are left to CI"
fi

gpu_count=$(cd "$build" && ctest -N -L '^gpu$' | sed -n 's/^Total Tests: *//p')
gpu_log="$build/ctest-gpu.log"
ran=0
skipped=0
if [ "${gpu_count:-0}" -gt 0 ]; then
  (cd "$build" && ctest --output-on-failure -V -L '^gpu$') >"$gpu_log" 2>&1 || status=1
  tail -n 25 "$gpu_log"
  # GoogleTest prints "[       OK ] Suite.Test" or "[  FAILED  ] Suite.Test" for a test that
  # ran, "[  SKIPPED ] Suite.Test" for one that GTEST_SKIP()ed (ctest -V prefixes "N: ").
  names() { grep -oE "\[ *$1 *\] [A-Za-z0-9_/]+\.[A-Za-z0-9_/]+" "$gpu_log" |
            awk '{print $NF}' | sort -u; }
  ran=$( { names OK; names FAILED; } | sort -u | grep -c . || true)
  skipped=$(names SKIPPED | grep -c . || true)
fi

# --- 5. verdict ------------------------------------------------------------------------------
say "gpu-labelled tests: ${gpu_count:-0} registered, $ran ran, $skipped skipped (log: $gpu_log)"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  if [ -f "$gpu_log" ]; then cp "$gpu_log" "$OUT/ctest-gpu.log"; fi
  if [ -f "$build/Testing/Temporary/LastTestsFailed.log" ]; then
    cp "$build/Testing/Temporary/LastTestsFailed.log" "$OUT/tests-failed.log"
  fi
fi
verdict=0
if [ "${gpu_count:-0}" -eq 0 ]; then
  say "FAILED: no test carries the ctest label 'gpu'"; verdict=1
elif [ "$ran" -eq 0 ]; then
  say "FAILED: every gpu test was skipped: the binary did not see the GPU (built with CUDA? driver?)"
  verdict=1
elif [ "$status" -ne 0 ]; then
  say "FAILED: some tests failed (see above and $gpu_log)"; verdict=1
else
  say "OK: all tests passed, $ran GPU tests ran on $(nvidia-smi -L | head -n1)"
fi

# --- 6. speed (--bench): measured even when a test failed, since device time is scarce --------
if [ "$bench" -eq 1 ]; then
  bash "$root/scripts/gpu_bench.sh" --lowbit "$build/tools/lowbit" --device cuda \
    --out "${OUT:-$build/bench-results}" || verdict=1
fi
# --- 7. compute-sanitizer (--sanitize): memcheck and racecheck over the GPU suites ------------
if [ "$sanitize" -eq 1 ]; then
  cs=$(command -v compute-sanitizer || true)
  if [ -z "$cs" ] && command -v nvcc >/dev/null; then cs="$(dirname "$(command -v nvcc)")/compute-sanitizer"; fi
  san_log="$build/compute-sanitizer.log"
  : >"$san_log"
  if [ -z "$cs" ] || [ ! -x "$cs" ]; then
    say "FAILED: --sanitize: compute-sanitizer not found (it ships with the CUDA toolkit)"; verdict=1
  else
    for bin in $(find "$build/tests" -name 'lowbit_*_tests' -type f -perm -u+x | sort); do
      # Only binaries that hold GPU suites.
      "$bin" --gtest_list_tests --gtest_filter='*Gpu.*' 2>/dev/null | grep -q '^[A-Za-z]' || continue
      for tool in memcheck racecheck; do
        say "compute-sanitizer --tool $tool $(basename "$bin")"
        if ! "$cs" --tool "$tool" --error-exitcode 99 --print-limit 20 "$bin" --gtest_filter='*Gpu.*' \
               >>"$san_log" 2>&1; then
          say "FAILED: compute-sanitizer $tool reported on $(basename "$bin") (see $san_log)"; verdict=1
        fi
      done
    done
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$san_log" | sort | uniq -c || true
  fi
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$san_log" "$OUT/compute-sanitizer.log"; fi
fi
exit "$verdict"
